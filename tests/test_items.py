"""Item encoding: the shared-prefix path equals encoding each full prompt alone."""

from __future__ import annotations

import copy

import torch

from rrec.items import common_prefix_len, encode_token_lists, tokenize_prompts
from rrec.prompts import add_answer_token, render_item_prompt
from tests.test_model import catalog
from tests.tolerance import N_TINY, assert_f32_close


def test_common_prefix_len():
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_len([[1, 2], [1, 2]]) == 1  # one token is always left as suffix
    assert common_prefix_len([[7, 1], [8, 1]]) == 0


def test_shared_prefix_equals_full_prompts(tokenizer, tiny_lm):
    tok = copy.deepcopy(tokenizer)
    answer = add_answer_token(tok, tiny_lm)
    items = catalog(12).to_dict("records")
    items[3]["title"] = "A much longer title than the others, with many more words in it"
    ids = tokenize_prompts(tok, [render_item_prompt(tok, it) for it in items], answer)
    assert common_prefix_len(ids) > 10  # the chat header is shared
    shared = encode_token_lists(tiny_lm, ids, pad_id=tok.pad_token_id, batch_size=5, progress=False)
    plain = encode_token_lists(
        tiny_lm, ids, pad_id=tok.pad_token_id, batch_size=5, progress=False, share_prefix=False
    )
    alone = torch.stack(
        [
            encode_token_lists(tiny_lm, [s], pad_id=tok.pad_token_id, progress=False, share_prefix=False)[0]
            for s in ids
        ]
    )
    assert_f32_close(plain, alone, n=N_TINY)  # padding does not leak
    assert_f32_close(shared, alone, n=N_TINY)  # nor does the shared prefix
