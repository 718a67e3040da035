"""Build the bundled preference set ``lifelong/benchmarks/data/preferences.jsonl`` (and its fact list).

The set is made for the structural reward model: every pair is labelled with the one dimension that separates
chosen from rejected (``factual``, ``relevance``, ``fluency``, ``style``). It is generated deterministically
from a hand-written bank of true facts (each with a plausible wrong answer) and hand-written how-to answers;
the split into ``train`` / ``heldout`` is made per source item (fact or how-to question), so no held-out
fact or question is ever seen in training. The facts also go to ``preference_facts.jsonl``: the knowledge
source of the ``fact-check`` branch (the same role an EditStore plays for a deployed model).

Run: ``.venv/bin/python bench/srm_make_preferences.py`` (rewrites both files; the output is byte-identical
for the same seed).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20250925
DATA = Path(__file__).resolve().parents[1] / "lifelong" / "benchmarks" / "data"

CAPITALS = [
    ("Australia", "Canberra", "Sydney"), ("Canada", "Ottawa", "Toronto"), ("Brazil", "Brasilia", "Rio de Janeiro"),
    ("Turkey", "Ankara", "Istanbul"), ("Switzerland", "Bern", "Zurich"), ("Nigeria", "Abuja", "Lagos"),
    ("Pakistan", "Islamabad", "Karachi"), ("New Zealand", "Wellington", "Auckland"), ("Morocco", "Rabat", "Casablanca"),
    ("Vietnam", "Hanoi", "Ho Chi Minh City"), ("South Korea", "Seoul", "Busan"), ("Japan", "Tokyo", "Osaka"),
    ("Germany", "Berlin", "Munich"), ("Italy", "Rome", "Milan"), ("Spain", "Madrid", "Barcelona"),
    ("Egypt", "Cairo", "Alexandria"), ("Kenya", "Nairobi", "Mombasa"), ("India", "New Delhi", "Mumbai"),
    ("China", "Beijing", "Shanghai"), ("Russia", "Moscow", "Saint Petersburg"), ("Norway", "Oslo", "Bergen"),
    ("Sweden", "Stockholm", "Gothenburg"), ("Poland", "Warsaw", "Krakow"), ("Argentina", "Buenos Aires", "Cordoba"),
    ("Peru", "Lima", "Cusco"), ("Chile", "Santiago", "Valparaiso"), ("Colombia", "Bogota", "Medellin"),
    ("Ireland", "Dublin", "Cork"), ("Portugal", "Lisbon", "Porto"), ("Greece", "Athens", "Thessaloniki"),
    ("the Netherlands", "Amsterdam", "Rotterdam"), ("Belgium", "Brussels", "Antwerp"), ("Austria", "Vienna", "Salzburg"),
    ("Hungary", "Budapest", "Debrecen"), ("the Czech Republic", "Prague", "Brno"), ("Finland", "Helsinki", "Tampere"),
    ("Denmark", "Copenhagen", "Aarhus"), ("Thailand", "Bangkok", "Chiang Mai"), ("the Philippines", "Manila", "Cebu"),
    ("Saudi Arabia", "Riyadh", "Jeddah"), ("Iran", "Tehran", "Isfahan"), ("Iraq", "Baghdad", "Basra"),
    ("Ghana", "Accra", "Kumasi"), ("Ethiopia", "Addis Ababa", "Dire Dawa"), ("Cuba", "Havana", "Camaguey"),
    ("Mexico", "Mexico City", "Guadalajara"), ("Ukraine", "Kyiv", "Lviv"), ("Malaysia", "Kuala Lumpur", "Penang"),
    ("Scotland", "Edinburgh", "Glasgow"), ("Bolivia", "La Paz", "Santa Cruz"),
]

AUTHORS = [
    ("Pride and Prejudice", "Jane Austen", "Charlotte Bronte"), ("Nineteen Eighty-Four", "George Orwell", "Aldous Huxley"),
    ("Hamlet", "William Shakespeare", "Christopher Marlowe"), ("War and Peace", "Leo Tolstoy", "Fyodor Dostoevsky"),
    ("The Odyssey", "Homer", "Virgil"), ("Don Quixote", "Miguel de Cervantes", "Lope de Vega"),
    ("Moby-Dick", "Herman Melville", "Nathaniel Hawthorne"), ("On the Origin of Species", "Charles Darwin", "Alfred Wallace"),
    ("Frankenstein", "Mary Shelley", "Percy Shelley"), ("The Divine Comedy", "Dante Alighieri", "Giovanni Boccaccio"),
    ("One Hundred Years of Solitude", "Gabriel Garcia Marquez", "Jorge Luis Borges"),
    ("The Great Gatsby", "F. Scott Fitzgerald", "Ernest Hemingway"), ("Crime and Punishment", "Fyodor Dostoevsky", "Leo Tolstoy"),
    ("Jane Eyre", "Charlotte Bronte", "Emily Bronte"), ("Wuthering Heights", "Emily Bronte", "Charlotte Bronte"),
    ("The Republic", "Plato", "Aristotle"), ("A Brief History of Time", "Stephen Hawking", "Carl Sagan"),
    ("Les Miserables", "Victor Hugo", "Alexandre Dumas"), ("The Catcher in the Rye", "J. D. Salinger", "John Steinbeck"),
    ("Ulysses", "James Joyce", "Samuel Beckett"),
]

SYMBOLS = [
    ("gold", "Au", "Ag"), ("silver", "Ag", "Si"), ("sodium", "Na", "So"), ("potassium", "K", "P"), ("iron", "Fe", "Ir"),
    ("lead", "Pb", "Ld"), ("tin", "Sn", "Ti"), ("mercury", "Hg", "Me"), ("tungsten", "W", "Tu"), ("copper", "Cu", "Co"),
]

# (question, fact prompt = statement prefix, correct answer, wrong answer)
MISC = [
    ("Which planet is the largest in the Solar System?", "The largest planet in the Solar System is", "Jupiter", "Saturn"),
    ("Which planet is closest to the Sun?", "The planet closest to the Sun is", "Mercury", "Venus"),
    ("Which planet is known as the Red Planet?", "The planet known as the Red Planet is", "Mars", "Venus"),
    ("Which planet has the most prominent rings?", "The planet with the most prominent rings is", "Saturn", "Neptune"),
    ("At what temperature in Celsius does water boil at sea level?", "At sea level water boils at", "100 degrees Celsius", "90 degrees Celsius"),
    ("How many legs does a spider have?", "A spider has", "eight legs", "six legs"),
    ("Which is the largest ocean on Earth?", "The largest ocean on Earth is the", "Pacific Ocean", "Atlantic Ocean"),
    ("What is the tallest mountain above sea level?", "The tallest mountain above sea level is", "Mount Everest", "K2"),
    ("What is the hardest natural mineral?", "The hardest natural mineral is", "diamond", "quartz"),
    ("Which gas do plants absorb for photosynthesis?", "For photosynthesis plants absorb", "carbon dioxide", "nitrogen"),
    ("Who developed the theory of general relativity?", "The theory of general relativity was developed by", "Albert Einstein", "Isaac Newton"),
    ("Who painted the Mona Lisa?", "The Mona Lisa was painted by", "Leonardo da Vinci", "Michelangelo"),
    ("Who discovered penicillin?", "Penicillin was discovered by", "Alexander Fleming", "Louis Pasteur"),
    ("Who was the first person to walk on the Moon?", "The first person to walk on the Moon was", "Neil Armstrong", "Buzz Aldrin"),
    ("What is the currency of Japan?", "The currency of Japan is the", "yen", "won"),
    ("What is the currency of the United Kingdom?", "The currency of the United Kingdom is the", "pound sterling", "euro"),
    ("What is the currency of India?", "The currency of India is the", "rupee", "rupiah"),
    ("What is the currency of Switzerland?", "The currency of Switzerland is the", "Swiss franc", "euro"),
    ("What is the largest hot desert in the world?", "The largest hot desert in the world is the", "Sahara", "Gobi"),
    ("What is the smallest prime number?", "The smallest prime number is", "two", "one"),
    ("What is the square root of 81?", "The square root of 81 is", "nine", "eight"),
    ("How many sides does a hexagon have?", "A hexagon has", "six sides", "eight sides"),
    ("At what temperature in Fahrenheit does water freeze?", "Water freezes at", "32 degrees Fahrenheit", "0 degrees Fahrenheit"),
    ("What language is mostly spoken in Brazil?", "The main language spoken in Brazil is", "Portuguese", "Spanish"),
    ("What language is mostly spoken in Argentina?", "The main language spoken in Argentina is", "Spanish", "Portuguese"),
    ("What language is mostly spoken in Austria?", "The main language spoken in Austria is", "German", "French"),
    ("In which year did the Second World War end?", "The Second World War ended in", "1945", "1944"),
    ("In which year did the Berlin Wall fall?", "The Berlin Wall fell in", "1989", "1991"),
    ("Who invented the telephone?", "The telephone was invented by", "Alexander Graham Bell", "Thomas Edison"),
    ("Which organ pumps blood through the human body?", "The organ that pumps blood through the body is the", "heart", "liver"),
    ("What is the largest organ of the human body?", "The largest organ of the human body is the", "skin", "brain"),
    ("How many bones are in the adult human body?", "The adult human body has", "206 bones", "212 bones"),
    ("What is the chemical formula of water?", "The chemical formula of water is", "H2O", "CO2"),
    ("What is the atomic number of carbon?", "The atomic number of carbon is", "6", "12"),
    ("Which part of the cell is called its powerhouse?", "The powerhouse of the cell is the", "mitochondria", "nucleus"),
    ("Who composed the Fifth Symphony in C minor?", "The Fifth Symphony in C minor was composed by", "Ludwig van Beethoven", "Wolfgang Amadeus Mozart"),
    ("Who painted The Starry Night?", "The Starry Night was painted by", "Vincent van Gogh", "Claude Monet"),
    ("Who painted the ceiling of the Sistine Chapel?", "The ceiling of the Sistine Chapel was painted by", "Michelangelo", "Raphael"),
    ("Which country is the largest by area?", "The largest country by area is", "Russia", "Canada"),
    ("What is the largest mammal?", "The largest mammal is the", "blue whale", "African elephant"),
    ("What is the fastest land animal?", "The fastest land animal is the", "cheetah", "lion"),
    ("What is the tallest animal?", "The tallest animal is the", "giraffe", "elephant"),
    ("What is the freezing point of water in Celsius?", "Water freezes at", "0 degrees Celsius", "10 degrees Celsius"),
    ("How many days are in a leap year?", "A leap year has", "366 days", "365 days"),
    ("What is the longest bone in the human body?", "The longest bone in the human body is the", "femur", "tibia"),
]

# How-to questions with short, correct, fluent answers (two or three sentences each).
GENERAL = [
    ("How do I boil an egg?", ["Place the egg in a pot of boiling water.", "Cook it for about nine minutes for a firm yolk.", "Cool it in cold water before peeling."]),
    ("How can I make a cup of tea?", ["Boil fresh water and pour it over a tea bag.", "Let it steep for three to five minutes.", "Remove the bag and add milk or sugar if you like."]),
    ("How do I change a flat bicycle tyre?", ["Remove the wheel and lever the tyre off the rim.", "Replace or patch the inner tube.", "Refit the tyre and pump it to the pressure printed on its side."]),
    ("How can I fall asleep faster?", ["Keep a regular bedtime and a dark, cool room.", "Avoid screens and caffeine in the evening.", "Try slow breathing when you lie down."]),
    ("How do I water a cactus?", ["Water it thoroughly only when the soil is completely dry.", "In winter water it about once a month.", "Make sure the pot drains well."]),
    ("How do I start learning to run?", ["Begin with short intervals of running and walking.", "Run three times a week and rest in between.", "Increase your distance slowly, by about ten percent a week."]),
    ("How should I store fresh bread?", ["Keep it in a paper bag or bread box at room temperature.", "Freeze slices you will not eat within two days.", "Avoid the fridge, which makes bread stale faster."]),
    ("How do I remove a coffee stain from a shirt?", ["Rinse the stain with cold water as soon as possible.", "Rub in a little liquid detergent.", "Wash the shirt as usual and check the stain before drying."]),
    ("How can I save money on groceries?", ["Plan your meals and shop with a list.", "Buy store brands and seasonal produce.", "Avoid shopping when you are hungry."]),
    ("How do I write a good cover letter?", ["Address it to a named person if you can.", "Explain why you fit this particular role with one or two examples.", "Keep it to one page and proofread it."]),
    ("How do I clean a cast iron pan?", ["Wash it with hot water and a brush while it is still warm.", "Dry it completely on the stove.", "Rub in a thin layer of oil before storing it."]),
    ("How can I improve my handwriting?", ["Hold the pen loosely and write slowly.", "Practise the basic letter shapes every day.", "Keep the letters the same size and slant."]),
    ("How do I back up my phone?", ["Connect to Wi-Fi and open the backup settings.", "Turn on automatic cloud backup.", "Also copy your photos to a computer now and then."]),
    ("How do I plant tomato seedlings?", ["Choose a sunny spot with rich, well-drained soil.", "Plant the seedlings deep, up to their first leaves.", "Water them well and add a stake for support."]),
    ("How can I reduce stress at work?", ["Break large tasks into small steps.", "Take short breaks away from the screen.", "Talk to your manager when the workload is too high."]),
    ("How do I cook rice on the stove?", ["Rinse one cup of rice and add it to two cups of water.", "Bring it to a boil, cover, and simmer for fifteen minutes.", "Let it rest for five minutes before serving."]),
    ("How should I prepare for a job interview?", ["Research the company and the role.", "Prepare short stories that show your skills.", "Arrive early and bring questions to ask."]),
    ("How do I keep my houseplants healthy?", ["Give each plant the light it needs.", "Water when the top of the soil is dry.", "Feed them during the growing season."]),
    ("How can I learn a new language?", ["Practise a little every day.", "Listen to native speakers and repeat what they say.", "Use flashcards to review new words."]),
    ("How do I defrost a freezer?", ["Switch it off and empty it.", "Put towels on the floor and leave the door open.", "Wipe it dry before switching it back on."]),
    ("How do I sharpen a kitchen knife?", ["Hold the blade at a steady angle of about twenty degrees on a whetstone.", "Draw it across the stone several times on each side.", "Finish with a honing steel."]),
    ("How can I make my laptop battery last longer?", ["Lower the screen brightness.", "Close programs you are not using.", "Avoid leaving it at full charge in a hot place."]),
    ("How do I make a simple budget?", ["Write down your monthly income.", "List your fixed costs and set limits for everything else.", "Track your spending and adjust each month."]),
    ("How do I get rid of fruit flies?", ["Throw away overripe fruit and take out the rubbish.", "Set a trap with a little vinegar and a drop of dish soap.", "Keep the sink and counters clean."]),
    ("How do I iron a shirt?", ["Start with the collar, then the cuffs and sleeves.", "Iron the back and then the two front panels.", "Hang it up straight away to avoid creases."]),
    ("How can I stay focused while studying?", ["Put your phone in another room.", "Study in blocks of twenty-five minutes with short breaks.", "Set a clear goal for each session."]),
    ("How do I descale a kettle?", ["Fill it halfway with equal parts water and white vinegar.", "Boil it and let it stand for an hour.", "Rinse it well and boil clean water once before use."]),
    ("How do I choose a good watermelon?", ["Pick one that feels heavy for its size.", "Look for a creamy yellow spot where it rested on the ground.", "Tap it and listen for a deep, hollow sound."]),
    ("How do I unclog a sink?", ["Pour boiling water down the drain.", "Use a plunger to loosen the blockage.", "If that fails, clean the trap under the sink."]),
    ("How can I be more productive in the morning?", ["Prepare your clothes and tasks the night before.", "Start with the most important task.", "Avoid checking email for the first hour."]),
    ("How do I look after a new tattoo?", ["Keep the bandage on for the first few hours.", "Wash it gently and apply a thin layer of unscented lotion.", "Keep it out of the sun and do not scratch it."]),
    ("How do I make a paper airplane?", ["Fold a sheet of paper in half lengthwise and unfold it.", "Fold the top corners to the centre line, then fold the new edges in again.", "Fold it in half and fold down the wings."]),
]

CAP_TEMPLATES = ["The capital of {s} is {a}.", "{a} is the capital city of {s}.", "{s} has its capital in {a}."]
AUTH_TEMPLATES = ["{s} was written by {a}.", "{a} wrote {s}.", "The author of {s} is {a}."]
SYM_TEMPLATES = ["The chemical symbol for {s} is {a}.", "The element {s} has the chemical symbol {a}."]

FILLER_OPEN = ["Great question! I am so glad you asked.", "What a wonderful question, thank you for asking!",
               "Absolutely! Happy to help with that.", "Sure thing! This is something many people wonder about."]
FILLER_CLOSE = ["I hope this helps! Let me know if you have any other questions.",
                "I hope that answers your question! Feel free to ask me anything else.",
                "Hope this helps, and have a wonderful day!"]
EVASIVE = ["That is an interesting question, and people have many different opinions about it.",
           "There are lots of things to consider here, and it really depends on your situation.",
           "I would suggest looking into it further, since the topic is quite broad.",
           "Many people ask about this, and it is worth thinking about carefully."]


def _facts() -> list[dict]:
    out = []
    for s, a, w in CAPITALS:
        out.append(dict(kind="capital", subject=s, question=f"What is the capital of {s}?",
                        fact_prompt=f"The capital of {s} is", answer=a, wrong=w, templates=CAP_TEMPLATES))
    for s, a, w in AUTHORS:
        out.append(dict(kind="author", subject=s, question=f"Who wrote {s}?", fact_prompt=f"{s} was written by",
                        answer=a, wrong=w, templates=AUTH_TEMPLATES))
    for s, a, w in SYMBOLS:
        out.append(dict(kind="symbol", subject=s, question=f"What is the chemical symbol for {s}?",
                        fact_prompt=f"The chemical symbol for {s} is", answer=a, wrong=w, templates=SYM_TEMPLATES))
    for q, p, a, w in MISC:
        out.append(dict(kind="misc", subject=p, question=q, fact_prompt=p, answer=a, wrong=w,
                        templates=["%s {a}." % p]))
    return out


def _statement(fact: dict, answer: str, rng: random.Random) -> str:
    text = rng.choice(fact["templates"]).format(s=fact["subject"], a=answer)
    return text[0].upper() + text[1:]


def _typos(text: str, rng: random.Random) -> str:
    words = text.split()
    out = []
    for w in words:
        if len(w) > 3 and rng.random() < 0.6:
            i = rng.randrange(1, len(w) - 2)
            op = rng.choice(["swap", "drop", "double"])
            if op == "swap":
                w = w[:i] + w[i + 1] + w[i] + w[i + 2:]
            elif op == "drop":
                w = w[:i] + w[i + 1:]
            else:
                w = w[:i] + w[i] * 2 + w[i:]
        out.append(w)
    return " ".join(out)


def _shuffle(text: str, rng: random.Random) -> str:
    words = text.rstrip(".").split()
    for _ in range(10):
        rng.shuffle(words)
        shuffled = " ".join(words)
        if shuffled != text.rstrip("."):
            break
    return shuffled[0].upper() + shuffled[1:] + "."


def _broken(text: str, rng: random.Random) -> str:
    """Drop function words and repeat fragments: keeps the content words, breaks the grammar."""
    stop = {"the", "is", "of", "a", "an", "to", "and", "in", "it", "was", "by", "for", "with", "on", "its", "has"}
    words = [w for w in text.rstrip(".").split() if w.lower() not in stop]
    if len(words) > 3:
        i = rng.randrange(0, len(words) - 2)
        words = words[:i] + words[i + 1:i + 3] + words[i:i + 1] + words[i + 3:]
    return " ".join(w.lower() for w in words) + " the of is"


def _fluency_corrupt(text: str, rng: random.Random) -> str:
    kind = rng.choice([_typos, _shuffle, _broken])
    bad = kind(text, rng)
    return bad if bad != text else _shuffle(text, rng)


def _style_pair(prompt: str, answer_short: str, sentences: list[str], rng: random.Random, general: bool) -> tuple[str, str, str, str]:
    """One style failure: returns (prompt, chosen, rejected, failure kind)."""
    full = " ".join(sentences)
    kinds = ["caps", "repeat", "padding", "lowercase-runon", "one-word" if not general else "list", "sentence"]
    kind = rng.choice(kinds)
    if kind == "caps":
        return prompt, full, full.upper().replace(".", "!!!"), kind
    if kind == "repeat":
        loop = " ".join([sentences[0]] * rng.choice([3, 4]))
        return prompt, full, (loop + " " + " ".join(sentences[1:])).strip(), kind
    if kind == "padding":
        return prompt, full, f"{rng.choice(FILLER_OPEN)} {full} {rng.choice(FILLER_CLOSE)}", kind
    if kind == "lowercase-runon":
        runon = " and ".join(s.rstrip(".").lower() for s in sentences) + " and so on and so on"
        return prompt, full, runon, kind
    if kind == "one-word":
        return f"{prompt} Answer in one word.", answer_short + ".", f"{rng.choice(FILLER_OPEN)} {full} {rng.choice(FILLER_CLOSE)}", kind
    if kind == "list":
        bullets = "\n".join(f"- {s}" for s in sentences)
        return f"{prompt} Give the answer as a short bulleted list.", bullets, full, kind
    # "sentence": a full-sentence answer was asked for, the rejected one is a bare fragment
    return f"{prompt} Please answer in a complete sentence.", full, answer_short.lower(), kind


def build(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    facts = _facts()
    order = list(range(len(facts)))
    rng.shuffle(order)
    n_held = round(len(facts) * 0.27)
    for rank, i in enumerate(order):
        facts[i]["split"] = "heldout" if rank < n_held else "train"
    general = [dict(question=q, sentences=s) for q, s in GENERAL]
    gorder = list(range(len(general)))
    rng.shuffle(gorder)
    for rank, i in enumerate(gorder):
        general[i]["split"] = "heldout" if rank < round(len(general) * 0.27) else "train"

    pairs: list[dict] = []

    def add(prompt: str, chosen: str, rejected: str, dimension: str, split: str, failure: str) -> None:
        pairs.append(dict(prompt=prompt, chosen=chosen, rejected=rejected, dimension=dimension, split=split,
                          failure=failure))

    # factual: the same sentence with the right and a plausible wrong answer
    for f in facts:
        template = rng.choice(f["templates"])
        chosen = template.format(s=f["subject"], a=f["answer"])
        rejected = template.format(s=f["subject"], a=f["wrong"])
        add(f["question"], chosen[0].upper() + chosen[1:], rejected[0].upper() + rejected[1:], "factual", f["split"], "wrong-fact")

    reuse = list(range(len(facts)))
    rng.shuffle(reuse)
    pools = {"relevance": reuse[:75], "fluency": reuse[40:115] if len(reuse) >= 115 else reuse[-75:], "style": reuse[-75:]}
    lead = ["", "Quick question: ", "I was wondering: ", "Can you help? "]
    for i in pools["relevance"]:
        f = facts[i]
        prompt = rng.choice(lead) + f["question"]
        chosen = _statement(f, f["answer"], rng)
        if rng.random() < 0.25:
            rejected, failure = rng.choice(EVASIVE), "evasive"
        else:
            others = [g for g in facts if g["split"] == f["split"] and g["kind"] != f["kind"]]
            other = rng.choice(others)
            rejected, failure = _statement(other, other["answer"], rng), "off-topic"
        add(prompt, chosen, rejected, "relevance", f["split"], failure)
    for i in pools["fluency"]:
        f = facts[i]
        chosen = _statement(f, f["answer"], rng)
        add(f["question"], chosen, _fluency_corrupt(chosen, rng), "fluency", f["split"], "garbled")
    for i in pools["style"]:
        f = facts[i]
        chosen = _statement(f, f["answer"], rng)
        prompt, c, r, kind = _style_pair(f["question"], f["answer"], [chosen], rng, general=False)
        add(prompt, c, r, "style", f["split"], kind)

    for g in general:
        full = " ".join(g["sentences"])
        # relevance
        if rng.random() < 0.3:
            rejected, failure = rng.choice(EVASIVE), "evasive"
        else:
            other = rng.choice([h for h in general if h is not g and h["split"] == g["split"]])
            rejected, failure = " ".join(other["sentences"]), "off-topic"
        add(g["question"], full, rejected, "relevance", g["split"], failure)
        # fluency
        add(g["question"], full, " ".join(_fluency_corrupt(s, rng) for s in g["sentences"]), "fluency", g["split"], "garbled")
        # style (a list answer is a natural fit for how-to questions)
        prompt, c, r, kind = _style_pair(g["question"], g["sentences"][0].rstrip("."), g["sentences"], rng, general=True)
        add(prompt, c, r, "style", g["split"], kind)

    rng.shuffle(pairs)
    for n, p in enumerate(pairs):
        p["id"] = f"pref-{n:04d}"
    fact_rows = [dict(prompt=f["fact_prompt"], target=f["answer"], question=f["question"]) for f in facts]
    return pairs, fact_rows


def main() -> None:
    pairs, facts = build()
    keys = ["id", "prompt", "chosen", "rejected", "dimension", "split", "failure"]
    with open(DATA / "preferences.jsonl", "w") as fh:
        for p in pairs:
            fh.write(json.dumps({k: p[k] for k in keys}, ensure_ascii=False) + "\n")
    with open(DATA / "preference_facts.jsonl", "w") as fh:
        for f in facts:
            fh.write(json.dumps(f, ensure_ascii=False) + "\n")
    from collections import Counter

    print(len(pairs), "pairs;", len(facts), "facts")
    print(Counter((p["dimension"], p["split"]) for p in pairs))


if __name__ == "__main__":
    main()
