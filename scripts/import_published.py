"""Import the learners the published D2UE code trained into a run folder that eval.py and predict.py score like any
other.

    python scripts/import_published.py --published <out_dir> --config cfgs/RSNA_AE.yaml [Section.key=value ...]

<out_dir> is the folder the published code trained in: train/0.pth, train/1.pth, ... (bare state dicts, read in
numeric order as the published evaluation does). --config is this project's config or the published YAML the
learners were trained with (keys this project lacks, such as Exp.gpu, and keys left empty, such as the published AE
YAML's mem_dim: Null, are ignored and named). The run folder is Exp.out_dir; it must not exist yet and is written
whole or not at all. The learners bring their weights and BatchNorm statistics, nothing of their training: train.py
refuses to resume or extend the folder.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from utils.errors import ArgumentParser, cli  # noqa: E402
from utils.run.published_run import import_published  # noqa: E402


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--published", required=True, help="the published code's Exp.out_dir (holds train/<k>.pth)")
    parser.add_argument("--config", required=True, help="YAML file: ours (cfgs/) or the published one")
    parser.add_argument("overrides", nargs="*", help="Section.key=value, e.g. Exp.out_dir=./runs/published_rsna_AE")
    return parser.parse_args(argv)


@cli
def main(argv=None):
    args = parse_args(argv)
    run_dir = import_published(args.published, args.config, args.overrides)
    print(f"wrote {run_dir}; score it with: python eval.py --config {run_dir / 'config.yaml'}")


if __name__ == "__main__":
    main()
