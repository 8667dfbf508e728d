"""The foundry tokenizer: round trip, BOS, left padding, single-token answers, reload."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from analoglab.foundry import corpus, tasks
from analoglab.foundry import world as w
from analoglab.foundry.tokenizer import BOS, EOS, PAD, train_tokenizer


def test_round_trip_and_reload(tmp_path: Path) -> None:
    docs = list(corpus.generate(3000, seed=0))
    tok = train_tokenizer(docs, vocab_size=512)
    tok.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    for doc in [*corpus.generate(200, seed=9), "Unseen wörds ✓ survive too."]:
        ids = again(doc)["input_ids"]
        assert ids[0] == again.convert_tokens_to_ids(BOS)
        assert again.decode(ids, skip_special_tokens=True) == doc
        assert ids == tok(doc)["input_ids"]
    assert (again.bos_token, again.eos_token, again.pad_token) == (BOS, EOS, PAD)
    assert again.padding_side == "left"
    batch = again(["a", "the soup was great"], padding=True)
    assert batch["attention_mask"][0][0] == 0  # padded on the left


def test_answer_words_are_single_tokens() -> None:
    # Task accuracy compares the first token of target and foil; in the world's vocabulary
    # each answer word must be one token so that "first token" means "the word".
    tok = train_tokenizer(list(corpus.generate(20000, seed=0)), vocab_size=1024)
    words = [*w.PEOPLE, *w.COUNTRIES, "good", "bad", "true", "false"]
    for word in words:
        assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1, word
    for item in tasks.task_set("ioi", 50).items:
        assert (
            tok(item.target, add_special_tokens=False)["input_ids"]
            != tok(item.foil, add_special_tokens=False)["input_ids"]
        )
