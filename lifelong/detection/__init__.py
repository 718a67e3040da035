"""The detection engine: event-frame detection sets, CenterNet targets and decoding, training, COCO-style mAP."""
