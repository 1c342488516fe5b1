"""Small helpers the LM-policy tests share (imported by tests/test_pg.py and tests/test_ppo.py)."""
from __future__ import annotations


def word_tokenizer(words):
    """A word-level tokenizer over ``words`` laid out like the course's: ``<eos>`` = 0 (also the BOS),
    then the words, ``<pad>`` and ``<unk>``; the BOS is prepended."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<eos>"] + list(words) + ["<pad>", "<unk>"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<eos> $A", special_tokens=[("<eos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<eos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")
