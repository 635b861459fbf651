"""SYNTHETIC documents for the retrieval and RAG-baseline tests: short made-up passages on unrelated
topics, so a real sentence encoder (minilm-l6) ranks each question's own passage first, and one long
passage that chunking cuts into several pieces. Nothing here is real data."""
from __future__ import annotations

import json
from pathlib import Path

# SYNTHETIC: one passage per topic (rows of a .jsonl with an "id" field).
PASSAGES = {
    "bread": "Bread is baked from flour, water, salt and yeast. The yeast ferments the sugars in the flour, "
             "the gas it makes is trapped in the gluten, and so the dough rises before it goes into a hot oven.",
    "chess": "Chess is a board game for two players. Each player starts with sixteen pieces on an eight by eight "
             "board, and the game is won by checkmating the opposing king.",
    "tides": "Ocean tides are caused mostly by the gravity of the Moon, with a smaller pull from the Sun; the "
             "sea rises and falls twice a day as the Earth turns under the two bulges of water.",
    "bees": "Honey bees collect nectar from flowers, carry it back to the hive and turn it into honey, which "
            "they store in wax cells to feed the colony through the winter.",
}
# SYNTHETIC: one question per passage, worded unlike the passage where possible.
QUESTIONS = {
    "bread": "What makes a loaf of dough get bigger before baking?",
    "chess": "How do you win the board game with kings and queens?",
    "tides": "Why does the sea level go up and down every day?",
    "bees": "Where does honey come from?",
}

# SYNTHETIC: a long text document (~150 words) whose facts sit in different chunks at chunk_words=40.
VOLCANO = (
    "Volcanoes form where molten rock from the mantle rises through cracks in the crust of the planet. "
    "Most of them sit along the edges of tectonic plates, where one plate slides under another one and melts. "
    "When pressure builds up under the surface, the volcano erupts and throws out lava, ash and hot gas. "
    "Lava that cools quickly turns into dark glassy rock, while lava that cools slowly grows large crystals. "
    "Some eruptions are gentle and the lava flows out slowly like thick syrup down the slopes of the mountain. "
    "Others are violent and blast ash high into the sky, where winds carry it around the world for weeks. "
    "The observatory on the northern rim keeps a seismometer whose serial code is ZX-4471 and it records "
    "every small tremor. Scientists watch those tremors and the swelling of the ground to warn nearby towns "
    "before an eruption begins, which has saved many lives in the valleys below the peak."
)
CHUNK_WORDS, OVERLAP = 40, 10  # small, so the volcano text is several chunks


def write_passages(path: Path, passages: dict[str, str] = PASSAGES, id_field: str = "id") -> Path:
    path.write_text("".join(json.dumps({id_field: key, "text": text}) + "\n" for key, text in passages.items()))
    return path


def write_corpus(root: Path) -> dict[str, Path]:
    """passages.jsonl (ids from the "id" field) and volcano.txt under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    volcano = root / "volcano.txt"
    volcano.write_text(VOLCANO + "\n")
    return {"passages": write_passages(root / "passages.jsonl"), "volcano": volcano}
