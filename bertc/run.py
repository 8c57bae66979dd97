"""`python -m bertc.run`: the former name of `python -m bertc.serve` (serve a target=stablehlo artifact), kept
so existing commands keep working."""

from bertc.serve import main

if __name__ == "__main__":
    raise SystemExit(main())
