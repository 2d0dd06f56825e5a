"""Write the bundled demo corpus: short stories in simple English (and some Chinese), plus small SFT samples.

Every sentence is composed here from the word lists and templates below with a fixed seed, so the output is
reproducible and free to redistribute (Apache-2.0, like the code). Run from the repository root:

    python -m bessemer.corpus.generate            # rewrites bessemer/corpus/*.jsonl
    python -m bessemer.corpus.generate --check    # fails if the shipped files differ from a fresh run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

HERE = Path(__file__).parent
SEED = 20260101
N_STORIES = 3000
CHINESE_EVERY = 8  # one story in eight is Chinese

NAMES = [
    "Mia",
    "Leo",
    "Ava",
    "Sam",
    "Nora",
    "Ben",
    "Lily",
    "Max",
    "Zoe",
    "Tom",
    "Ella",
    "Finn",
    "Ruby",
    "Omar",
]
ANIMALS = ["cat", "dog", "fox", "rabbit", "owl", "duck", "bear", "mouse", "frog", "turtle", "horse", "bird"]
PLACES = [
    "the park",
    "the forest",
    "the beach",
    "the garden",
    "the farm",
    "the river",
    "the hill",
    "the town",
]
THINGS = ["ball", "kite", "red box", "small boat", "old map", "blue hat", "shiny key", "book", "lamp", "drum"]
FEELINGS = ["happy", "sad", "scared", "curious", "tired", "proud", "excited", "calm", "surprised", "brave"]
COLORS = ["red", "blue", "green", "yellow", "white", "brown", "orange", "purple"]
WEATHER = ["sunny", "rainy", "windy", "cold", "warm", "cloudy", "quiet", "bright"]
TIMES = ["One morning", "One day", "Once upon a time", "Last summer", "In the evening", "On a rainy day"]
ACTIONS = ["ran", "walked", "jumped", "looked", "played", "sang", "danced", "waited", "climbed", "swam"]
FOODS = ["apples", "bread", "soup", "cake", "carrots", "rice", "berries", "cookies"]

OPENINGS = [
    "{time}, {name} went to {place} with a {animal}.",
    "{time}, a little {animal} named {name} lived near {place}.",
    "{time}, {name} found a {thing} in {place}.",
    "{time}, it was {weather}, and {name} wanted to play at {place}.",
]
MIDDLES = [
    "The {animal} {action} around the {thing}.",
    "{name} felt {feeling} and {action} to {place}.",
    "They saw a {color} {thing} under a big tree.",
    'A {animal} asked, "Can I play with your {thing}?"',
    '{name} said, "Let us share the {food}."',
    "The day was {weather}, so they {action} slowly.",
    "Then the {animal} lost the {thing} and felt {feeling}.",
    "{name} looked everywhere for the {thing}.",
    "They ate {food} and laughed together.",
    "The {color} {animal} {action} over the small stone.",
]
ENDINGS = [
    "At the end of the day, {name} was {feeling} and went home.",
    "They became good friends, and the {animal} was {feeling}.",
    "{name} learned that sharing makes everyone {feeling}.",
    "Finally, they found the {thing}, and everyone was {feeling}.",
    "The sun went down, and {name} fell asleep with the {thing}.",
]

ZH_NAMES = ["小明", "小红", "小华", "小丽", "小刚", "小美"]
ZH_ANIMALS = ["小猫", "小狗", "小兔", "小鸟", "小鸭", "小熊"]
ZH_PLACES = ["公园", "森林", "河边", "花园", "山上", "学校"]
ZH_THINGS = ["皮球", "风筝", "书包", "帽子", "小船", "苹果"]
ZH_FEELINGS = ["高兴", "难过", "害怕", "好奇", "开心", "累"]
ZH_SENTENCES = [
    "{name}在{place}里看见了一只{animal}。",
    "{animal}很{feeling}，因为它找不到{thing}了。",
    "{name}和{animal}一起在{place}玩{thing}。",
    "天气很好，{name}带着{thing}去{place}。",
    "他们一起找到了{thing}，大家都很{feeling}。",
    "晚上，{name}回到家里，觉得很{feeling}。",
]

# SFT samples: tasks whose answers are computed here, so they are right by construction
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "up": "down", "happy": "sad", "day": "night"}
PLURALS = {
    "cat": "cats",
    "box": "boxes",
    "mouse": "mice",
    "child": "children",
    "leaf": "leaves",
    "bus": "buses",
}
ZH_WORDS = {"cat": "猫", "dog": "狗", "bird": "鸟", "book": "书", "apple": "苹果", "river": "河"}


def english_story(rng: random.Random) -> str:
    # one cast per story, so the sentences refer to the same characters
    cast = {
        "name": rng.choice(NAMES),
        "animal": rng.choice(ANIMALS),
        "place": rng.choice(PLACES),
        "thing": rng.choice(THINGS),
    }

    def fill(t: str) -> str:
        return t.format(
            **cast,
            feeling=rng.choice(FEELINGS),
            color=rng.choice(COLORS),
            weather=rng.choice(WEATHER),
            time=rng.choice(TIMES),
            action=rng.choice(ACTIONS),
            food=rng.choice(FOODS),
        )

    middle = [fill(rng.choice(MIDDLES)) for _ in range(rng.randint(3, 7))]
    return " ".join([fill(rng.choice(OPENINGS)), *middle, fill(rng.choice(ENDINGS))])


def chinese_story(rng: random.Random) -> str:
    cast = {
        "name": rng.choice(ZH_NAMES),
        "animal": rng.choice(ZH_ANIMALS),
        "place": rng.choice(ZH_PLACES),
        "thing": rng.choice(ZH_THINGS),
    }
    n = rng.randint(3, 6)
    return "".join(rng.choice(ZH_SENTENCES).format(**cast, feeling=rng.choice(ZH_FEELINGS)) for _ in range(n))


def stories(rng: random.Random) -> list[dict]:
    return [
        {"text": chinese_story(rng) if i % CHINESE_EVERY == CHINESE_EVERY - 1 else english_story(rng)}
        for i in range(N_STORIES)
    ]


def alpaca_rows(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(12):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        rows.append({"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} + {b} = {a + b}."})
    for word, opp in OPPOSITES.items():
        rows.append(
            {
                "instruction": "Give the opposite of the word.",
                "input": word,
                "output": f"The opposite of {word} is {opp}.",
            }
        )
    for word, plural in PLURALS.items():
        rows.append(
            {
                "instruction": f'What is the plural of "{word}"?',
                "input": "",
                "output": f"The plural is {plural}.",
            }
        )
    for _ in range(8):
        nums = [rng.randint(1, 99) for _ in range(5)]
        rows.append(
            {
                "instruction": "Sort these numbers from smallest to largest.",
                "input": ", ".join(map(str, nums)),
                "output": ", ".join(map(str, sorted(nums))),
            }
        )
    for word, zh in ZH_WORDS.items():
        rows.append(
            {
                "instruction": f'Translate "{word}" into Chinese.',
                "input": "",
                "output": zh,
                "system": "You are a helpful bilingual assistant.",
            }
        )
    for _ in range(4):
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        rows.append(
            {
                "instruction": f"Now multiply that by {c}.",
                "input": "",
                "output": f"{a + b} x {c} = {(a + b) * c}.",
                "history": [[f"Add {a} and {b}.", f"{a} + {b} = {a + b}."]],
            }
        )
    for _ in range(6):
        rows.append({"instruction": "Write a very short story.", "input": "", "output": english_story(rng)})
    return rows


def sharegpt_rows(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(20):
        animal, name = rng.choice(ANIMALS), rng.choice(NAMES)
        story = english_story(rng)
        rows.append(
            {
                "conversations": [
                    {"from": "human", "value": f"Tell me a short story about a {animal}."},
                    {"from": "gpt", "value": story},
                    {"from": "human", "value": f"Give the {animal} a name."},
                    {"from": "gpt", "value": f"Let us call the {animal} {name}."},
                ]
            }
        )
    for _ in range(12):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        rows.append(
            {
                "conversations": [
                    {"from": "system", "value": "You are a patient math tutor for children."},
                    {"from": "human", "value": f"What is {a} times {b}?"},
                    {"from": "gpt", "value": f"{a} times {b} is {a * b}."},
                    {"from": "human", "value": "And plus one?"},
                    {"from": "gpt", "value": f"{a * b} plus one is {a * b + 1}."},
                ]
            }
        )
    for word, zh in ZH_WORDS.items():
        rows.append(
            {
                "conversations": [
                    {"from": "human", "value": f'"{word}"用中文怎么说？'},
                    {"from": "gpt", "value": f'"{word}"的中文是"{zh}"。'},
                ]
            }
        )
    return rows


def render(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def outputs() -> dict[str, bytes]:
    """File name -> bytes of each corpus file; the same on every run."""
    rng = random.Random(SEED)
    return {
        "stories.jsonl": render(stories(rng)),
        "alpaca_sample.jsonl": render(alpaca_rows(rng)),
        "sharegpt_sample.jsonl": render(sharegpt_rows(rng)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE), help="output folder (default: this package folder)")
    parser.add_argument(
        "--check", action="store_true", help="compare with the files in --out instead of writing"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    stale = []
    for name, data in outputs().items():
        path = out / name
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(name)
            continue
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    if stale:
        sys.stderr.write(f"stale corpus files: {', '.join(stale)}; run python -m bessemer.corpus.generate\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
