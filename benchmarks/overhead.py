"""Parameter overhead of personalisation: what n_groups PEFT modules (+ projectors) add.

Builds the foundation model (default: full-size CLIP ViT-B/32 from its config, random weights,
so no download is needed; parameter counts do not depend on the weights), wraps it with
``n_groups`` adapters of each backend and reports the groups' PEFT parameters as a share of the
foundation model's. The paper reports about 1.3 % for 8 LoRA groups on CLIP ViT-B/32.

    python benchmarks/overhead.py                               # ViT-B/32, 8 groups, lora ia3 iisan
    python benchmarks/overhead.py --foundation tiny-clip --groups 4
Writes benchmarks/results/overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, markdown_table, scratch_folder, write_outputs  # noqa: E402
from recbole_perpeft.encoders import build_foundation_encoder  # noqa: E402
from recbole_perpeft.model.group_modules import Projector  # noqa: E402
from recbole_perpeft.peft_backends import build_grouped_encoder  # noqa: E402


def toy_content(foundation, n_items: int = 3) -> dict[str, torch.Tensor]:
    """A few blank items: the backends need content to exist, the counts do not depend on it."""
    ids, mask = foundation.processor.tokenize(["a title"] * n_items)
    content = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "has_title": torch.ones(n_items, dtype=torch.bool),
        "has_image": torch.ones(n_items, dtype=torch.bool),
    }
    if foundation.processor.image_shape is not None:
        content["pixel_values"] = torch.zeros(n_items, *foundation.processor.image_shape, dtype=torch.float16)
    return content


def overhead(foundation_name: str, backend: str, n_groups: int, hidden_size: int, cache_dir: Path) -> dict:
    foundation = build_foundation_encoder(foundation_name, seed=0)
    content = toy_content(foundation)
    encoder = build_grouped_encoder(foundation, backend, n_groups, content, f"overhead-{foundation_name}",
                                    cache_dir=cache_dir, show_progress=False, seed=0)
    per_group = sum(p.numel() for p in encoder.group_parameters(0))
    projector = sum(p.numel() for p in Projector(encoder.feature_dim, hidden_size).parameters())
    foundation_params = encoder.foundation_parameter_count()
    return {
        "foundation_model": foundation_name,
        "peft_type": backend,
        "n_groups": n_groups,
        "foundation_params": foundation_params,
        "peft_params_per_group": per_group,
        "projector_params_per_group": projector,
        "groups_peft_share_of_foundation": n_groups * per_group / foundation_params,
        "groups_peft_and_projector_share": n_groups * (per_group + projector) / foundation_params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--foundation", default="clip-vit-base-patch32-random")
    parser.add_argument("--backends", nargs="+", default=["lora", "ia3", "iisan"])
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--hidden_size", type=int, default=32, help="SASRec width h (projector F -> 2h -> h)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "overhead"))
    args = parser.parse_args()
    cache_dir = scratch_folder("bench-overhead-")
    rows = [overhead(args.foundation, backend, args.groups, args.hidden_size, cache_dir) for backend in args.backends]
    table = f"### Parameter overhead of {args.groups} groups on {args.foundation} (PEFT defaults of DESIGN.md §1)\n\n"
    table += markdown_table(
        ["PEFT", "foundation params", "PEFT params / group", "projector params / group",
         f"{args.groups} groups' PEFT / foundation", "with projectors"],
        [[r["peft_type"], r["foundation_params"], r["peft_params_per_group"], r["projector_params_per_group"],
          f"{100 * r['groups_peft_share_of_foundation']:.2f} %", f"{100 * r['groups_peft_and_projector_share']:.2f} %"]
         for r in rows])
    write_outputs(Path(args.out), {"machine": machine(), "settings": vars(args), "rows": rows}, table)


if __name__ == "__main__":
    main()
