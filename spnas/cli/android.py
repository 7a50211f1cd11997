"""``python -m spnas.cli.android``: the Android demo's assets (model, labels, preprocessing, golden pair) from
an exported .tflite, so nothing in ``android_demo`` is edited by hand when the model changes."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spnas.cli.android", description=__doc__)
    parser.add_argument("--tflite", required=True, metavar="MODEL", help="exported .tflite (int8 recommended)")
    parser.add_argument("--out", default="android_demo/app/src/main/assets", metavar="DIR",
                        help="assets folder of the app (default android_demo/app/src/main/assets)")
    parser.add_argument("--sample", metavar="IMAGE",
                        help="image for the golden pair and the app's bundled sample (default: chelsea.jpg)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    from spnas.android import DEFAULT_SAMPLE, artifact_spec_and_names, sync_assets
    from spnas.cli import run_cli
    from spnas.console import Console

    console = Console()

    def body() -> int:
        spec, names = artifact_spec_and_names(args.tflite)
        written = sync_assets(args.tflite, args.out, spec, class_names=names, sample=args.sample or DEFAULT_SAMPLE,
                              progress=console.info)
        print(f"{args.out}: {written['model']['source_file']} ({written['model']['precision']}, input "
              f"{written['input']['dtype']} {written['input']['mode']}) with labels, preprocessing and golden pair")
        return 0

    return run_cli(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
