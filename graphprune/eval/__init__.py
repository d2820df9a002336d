"""Evaluation harness entries: ``graphprune.eval.lmms`` is lmms-eval's ``--model graphprune`` (``graphprune[eval]``)."""
