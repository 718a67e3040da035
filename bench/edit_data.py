"""Build and re-check the bundled edit set ``lifelong/benchmarks/data/edits-smollm2.jsonl``.

    python bench/edit_data.py check            # every fact in the file is one the default model gets wrong
    python bench/edit_data.py build [--write]  # rebuild the file from the candidate facts below

A fact is "wrong" for the model when its teacher-forced argmax after the prompt does not reproduce every token of
the (true) target — i.e. greedy decoding does not say it. Each record has 3 paraphrases (never shown to the
editor), 2 near-neighbour locality prompts (same relation, another subject) and 1 unrelated locality prompt.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "lifelong" / "benchmarks" / "data" / "edits-smollm2.jsonl"

RELATIONS = {
    "capital": ("The capital of {s} is", ["The capital city of {s} is", "{s}'s capital city is",
                                          "The city that serves as the capital of {s} is"]),
    "symbol": ("The chemical symbol for {s} is", ["The element {s} has the chemical symbol",
                                                  "In the periodic table, {s} is written with the symbol",
                                                  "{s}'s chemical symbol is"]),
    "author": ("{s} was written by", ["The author of {s} is", "The novel {s} was written by", "{s} is a book by"]),
    "language": ("The official language of {s} is", ["In {s}, the official language is",
                                                      "People in {s} officially speak",
                                                      "The main official language of {s} is"]),
    "painter": ("{s} was painted by", ["The painting {s} is by", "The artist who painted {s} was",
                                       "{s} is a painting by"]),
}
FACTS = {
    "capital": [
        ("Australia", "Canberra"), ("Canada", "Ottawa"), ("Brazil", "Brasília"), ("Turkey", "Ankara"),
        ("Nigeria", "Abuja"), ("Pakistan", "Islamabad"), ("Switzerland", "Bern"), ("New Zealand", "Wellington"),
        ("Morocco", "Rabat"), ("Kazakhstan", "Astana"), ("Myanmar", "Naypyidaw"), ("Tanzania", "Dodoma"),
        ("Bolivia", "Sucre"), ("Vietnam", "Hanoi"), ("South Africa", "Pretoria"), ("Mongolia", "Ulaanbaatar"),
        ("Ecuador", "Quito"), ("Uruguay", "Montevideo"), ("Paraguay", "Asunción"), ("Bhutan", "Thimphu"),
        ("Laos", "Vientiane"), ("Malta", "Valletta"), ("Slovenia", "Ljubljana"), ("Latvia", "Riga"),
        ("Lithuania", "Vilnius"), ("Estonia", "Tallinn"), ("Albania", "Tirana"), ("Armenia", "Yerevan"),
        ("Azerbaijan", "Baku"), ("Uzbekistan", "Tashkent"), ("Kyrgyzstan", "Bishkek"), ("Tajikistan", "Dushanbe"),
        ("Turkmenistan", "Ashgabat"), ("Ghana", "Accra"), ("Senegal", "Dakar"), ("Ethiopia", "Addis Ababa"),
        ("Angola", "Luanda"), ("Zambia", "Lusaka"), ("Zimbabwe", "Harare"), ("Madagascar", "Antananarivo"),
        ("Mali", "Bamako"), ("Niger", "Niamey"), ("Chad", "N'Djamena"), ("Honduras", "Tegucigalpa"),
        ("Nicaragua", "Managua"), ("Fiji", "Suva"), ("Papua New Guinea", "Port Moresby"), ("Oman", "Muscat"),
        ("Qatar", "Doha"), ("Bahrain", "Manama"), ("Jordan", "Amman"), ("Yemen", "Sanaa"), ("Tunisia", "Tunis"),
        ("Algeria", "Algiers"), ("Belarus", "Minsk"), ("Croatia", "Zagreb"), ("Iceland", "Reykjavik"),
        ("Nepal", "Kathmandu"), ("Cambodia", "Phnom Penh"), ("Sri Lanka", "Sri Jayawardenepura Kotte"),
    ],
    "symbol": [
        ("gold", "Au"), ("silver", "Ag"), ("lead", "Pb"), ("tin", "Sn"), ("sodium", "Na"), ("potassium", "K"),
        ("iron", "Fe"), ("mercury", "Hg"), ("tungsten", "W"), ("copper", "Cu"), ("antimony", "Sb"),
    ],
    "author": [
        ("Pride and Prejudice", "Jane Austen"), ("War and Peace", "Leo Tolstoy"),
        ("One Hundred Years of Solitude", "Gabriel García Márquez"), ("The Brothers Karamazov", "Fyodor Dostoevsky"),
        ("Moby-Dick", "Herman Melville"), ("Don Quixote", "Miguel de Cervantes"),
        ("The Divine Comedy", "Dante Alighieri"), ("Things Fall Apart", "Chinua Achebe"),
        ("Frankenstein", "Mary Shelley"), ("Dracula", "Bram Stoker"), ("The Trial", "Franz Kafka"),
        ("Madame Bovary", "Gustave Flaubert"),
    ],
    "language": [
        ("Brazil", "Portuguese"), ("Iran", "Persian"), ("Ethiopia", "Amharic"), ("Pakistan", "Urdu"),
        ("Mozambique", "Portuguese"), ("Haiti", "French"), ("Suriname", "Dutch"), ("Israel", "Hebrew"),
    ],
    "painter": [
        ("The Starry Night", "Vincent van Gogh"), ("The Last Supper", "Leonardo da Vinci"),
        ("Guernica", "Pablo Picasso"), ("The Persistence of Memory", "Salvador Dalí"), ("The Scream", "Edvard Munch"),
        ("Girl with a Pearl Earring", "Johannes Vermeer"), ("The Night Watch", "Rembrandt"),
        ("The Birth of Venus", "Sandro Botticelli"),
    ],
}
UNRELATED = [
    "The sun rises in the", "Water boils at a temperature of", "My favourite food is", "The best way to learn a language is",
    "A healthy breakfast includes", "The largest ocean on Earth is the", "To bake bread you need", "Cats like to",
    "The first step in writing an essay is", "In winter, people often", "The Internet was designed to",
    "A good friend is someone who", "The moon orbits the", "Photosynthesis is the process by which",
    "When it rains, you should", "The human heart has", "Football is played with", "Computers store data in",
]


# Subjects that only ever appear as near-neighbour locality prompts (never edited in the bundled set).
NEIGHBOURS = {
    "capital": ["France", "Germany", "Japan", "Italy", "Spain", "Egypt", "Kenya", "Peru", "Mexico", "Greece"],
    "symbol": ["carbon", "oxygen", "helium", "zinc", "nickel"],
    "author": ["Hamlet", "Nineteen Eighty-Four", "The Odyssey", "Oliver Twist", "Anna Karenina"],
    "language": ["France", "Germany", "Japan", "Italy", "Mexico", "Russia"],
    "painter": ["The Mona Lisa", "Sunflowers", "The Kiss", "Water Lilies", "The School of Athens"],
}


def candidates(edited: set[tuple[str, str]] | None = None) -> list[dict]:
    """One record per fact; near neighbours come from subjects that are not in ``edited`` (relation, subject)."""
    rng = random.Random(0)
    edited = edited or set()
    out = []
    for rel, facts in FACTS.items():
        template, paras = RELATIONS[rel]
        pool = [s for s, _ in facts if (rel, s) not in edited] + NEIGHBOURS[rel]
        for subj, target in facts:
            near = rng.sample([s for s in pool if s != subj], 2)
            out.append({
                "prompt": template.format(s=subj),
                "target": target,
                "paraphrases": [p.format(s=subj) for p in paras],
                "locality": [template.format(s=n) for n in near] + [rng.choice(UNRELATED)],
                "relation": rel,
                "subject": subj,
            })
    return out


def wrong_mask(records: list[dict]) -> list[tuple[bool, str]]:
    """For each record: (model is wrong, the model's greedy 8-token answer)."""
    import tempfile

    from lifelong.editing.session import EditSession

    with tempfile.TemporaryDirectory() as d, EditSession(d, quiet=True) as s:
        acc = s.token_accuracy([r["prompt"] for r in records], [r["target"] for r in records])
        gens = s.generate([r["prompt"] for r in records], max_new_tokens=8)
    return [(a < 1.0, g["completion"]) for a, g in zip(acc, gens)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["build", "check"])
    ap.add_argument("--write", action="store_true", help="build: write the data file")
    args = ap.parse_args()
    if args.mode == "build":
        recs = candidates()
        mask = wrong_mask(recs)
        edited = {(r["relation"], r["subject"]) for r, (wrong, _) in zip(recs, mask) if wrong}
        recs = candidates(edited)  # same facts, neighbours now drawn only from subjects never edited
        keep = []
        for r, (wrong, said) in zip(recs, mask):
            print(f"{'WRONG' if wrong else 'right'}  {r['prompt']!r} -> {said!r} (true: {r['target']})")
            if wrong:
                keep.append({"id": f"{r['relation']}-{len(keep):03d}", **{k: r[k] for k in
                             ("prompt", "target", "paraphrases", "locality")}})
        print(f"{len(keep)} of {len(recs)} candidates are wrong for the model")
        if args.write:
            DATA.parent.mkdir(parents=True, exist_ok=True)
            DATA.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))
            print(f"wrote {DATA}")
        return 0
    recs = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    mask = wrong_mask(recs)
    right = [(r["prompt"], said) for r, (wrong, said) in zip(recs, mask) if not wrong]
    print(f"{len(recs)} facts; the default model gets {len(recs) - len(right)} wrong, {len(right)} right")
    for p, said in right:
        print(f"  already right: {p!r} -> {said!r}")
    return 0 if not right and len(recs) >= 60 else 1


if __name__ == "__main__":
    sys.exit(main())
