"""``python -m ssl4gie.bench``: the finetuning benchmark (:mod:`ssl4gie.bench.finetune`)."""

from ssl4gie.bench.finetune import main

if __name__ == "__main__":
    main()
