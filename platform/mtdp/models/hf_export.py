"""An mtdp student as a plain ``transformers`` folder, loadable without mtdp.

``export_hf(student_dir, out)`` writes:

* ``config.json`` + ``model.safetensors`` — the ``T5EncoderModel`` (``save_pretrained``);
* ``tokenizer.json`` + ``tokenizer_config.json`` — a fast
  tokenizer with ProtT5's ids (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, residues 3..27, sentinels
  up to 127): space-separated residues in, ``</s>`` appended, as ProtT5 users already do;
* ``projection.safetensors`` — the ``Linear(d_model, embed_dim)`` head (``weight``, ``bias``);
* ``mtdp_pooling.json`` — how a protein embedding is made (``masked`` or ``reference``);
* ``README.md`` — a model card with the few lines that reproduce ``mtdp embed``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..io import write_text
from ..tokenizer import EOS_ID, PAD_ID, RESIDUES, UNK_ID, VOCAB_SIZE

CARD = """---
library_name: transformers
tags: [protein, embeddings, knowledge-distillation, mtdp, t5]
---
# {name}: an mtdp student (T5 encoder + projection)

Exported by mtdp {version} from `{source}`. {params:,} parameters; per-protein embeddings of
{dim} dimensions; {pooling_text}

```python
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, T5EncoderModel

d = "{folder}"
tok = AutoTokenizer.from_pretrained(d)
enc = T5EncoderModel.from_pretrained(d).eval()
head = load_file(f"{{d}}/projection.safetensors")           # weight [{dim}, {d_model}], bias

seq = "MKTAYIAKQRQISFVKSHFSRQ"                              # U Z O B -> X; at most {max_len} residues
x = tok(" ".join(seq), return_tensors="pt")                 # residues + </s>
with torch.no_grad():
    h = enc(**x).last_hidden_state[0]
{pool_code}
    emb = pooled @ head["weight"].T + head["bias"]         # [{dim}]
```

Student metadata: `{metadata}`.
"""

MASKED = ("the embedding is the projection of the mean of the residue states (`</s>` "
          "excluded).", "    pooled = h[:-1].mean(0)                                 # residues only")
REFERENCE = ("the embedding is computed as the released MTDP model does: ids padded to "
             "{width} tokens and the mean taken over all of them, pads included.",
             "    x = tok(\" \".join(seq), return_tensors=\"pt\", padding=\"max_length\", "
             "max_length={width})\n    h = enc(**x).last_hidden_state[0]\n"
             "    pooled = h.mean(0)                                     # all {width} positions")


def _tokenizer(out: Path, max_len: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD_ID, "</s>": EOS_ID, "<unk>": UNK_ID}
    vocab.update({aa: 3 + i for i, aa in enumerate(RESIDUES)})
    first_sentinel = 3 + len(RESIDUES)
    vocab.update({f"<extra_id_{VOCAB_SIZE - 1 - i}>": i
                  for i in range(first_sentinel, VOCAB_SIZE)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                      special_tokens=[("</s>", EOS_ID)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=max_len + 1)
    fast.save_pretrained(str(out))


def export_hf(student_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the ``transformers`` folder of a student directory (see the module)."""
    from safetensors.torch import save_file

    from .. import __version__
    from .student import load_student

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output {out} exists and is not empty; choose a new folder")
    model = load_student(student_dir).fold_pool_norm()  # a plain projection: one Linear
    cfg = model.config
    out.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(str(out))
    _tokenizer(out, cfg.max_len)
    save_file({"weight": model.proj.weight.detach().contiguous(),
               "bias": model.proj.bias.detach().contiguous()},
              str(out / "projection.safetensors"))
    width = cfg.max_len + 1
    text, code = MASKED if cfg.pooling == "masked" else REFERENCE
    write_text(out / "mtdp_pooling.json", json.dumps(
        {"pooling": cfg.pooling, "max_len": cfg.max_len, "embed_dim": cfg.embed_dim}))
    write_text(out / "README.md", CARD.format(
        name=Path(student_dir).name, version=__version__, source=Path(student_dir).name,
        params=model.num_parameters(), dim=cfg.embed_dim, d_model=cfg.d_model,
        max_len=cfg.max_len, folder=out.name, metadata=json.dumps(cfg.metadata)[:500],
        pooling_text=text.format(width=width), pool_code=code.format(width=width)))
    return out
