"""`llnassist dataset ...`: site-model commands (thin; the work is in dataset.py)."""

from __future__ import annotations


def cmd_dataset_export(a) -> int:
    from .dataset import export, nnunet_integrity

    folder = export(a.cases, a.out, a.dataset_id, name=a.name, pseudonymize=a.pseudonymize,
                    allow_unreviewed=a.allow_unreviewed, seed=a.seed,
                    progress=(lambda m: None) if a.quiet else print)
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        print(f"wrote {folder} (nnU-Net is not installed here, so its own dataset check was not run)")
        return 0
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net talks a lot; its errors still raise
        try:
            nnunet_integrity(folder)
        except Exception as exc:  # nnU-Net raises plain errors
            from .errors import InputError

            raise InputError(f"nnU-Net's dataset check refused {folder}: {exc}") from None
    print(f"wrote {folder}; nnU-Net's dataset integrity check passed")
    return 0


def cmd_models(a) -> int:
    import json

    from .model import registry

    if not a.models_command:
        from .errors import InputError

        raise InputError("say what to do: llnassist models list | add PATH | remove ID | info ID")
    if a.models_command == "list":
        rows = registry.installed()
        for m in rows:
            trained = ("synthetic phantoms" if m["synthetic"] else m["training_data"] or "unknown data")
            print(f"{m['id']}  [{m['kind']}, {m['where']}, version {m['version']}]  trained on: {trained}"
                  + (f"; {m['evaluation']}" if m["evaluation"] else ""))
        print(f"(installed models live in {registry.user_dir()}; LLNASSIST_MODELS names another folder)")
    elif a.models_command == "add":
        res = registry.add(a.path, a.id)
        print(f"installed {res['id']} ({res['kind']}) in {res['path']}; use it with --model {res['id']}")
    elif a.models_command == "remove":
        print(f"removed {registry.remove(a.id)}")
    elif a.models_command == "info":
        print(json.dumps(registry.info(a.id), indent=2))
    return 0


def add_parsers(sub, parser_class) -> None:
    s = sub.add_parser("models", help="installed models: list, add (validated, copied), remove, info")
    # no required=True: nnunetv2 pulls the old PyPI `argparse` backport, which shadows the standard
    # library's wherever site-packages comes first on the path (an extension's PYTHONPATH)
    ms = s.add_subparsers(dest="models_command", parser_class=parser_class)
    ms.add_parser("list", help="bundled and installed models, with what each was trained on and its evaluation")
    p = ms.add_parser("add", help="validate a model folder (LLNAssist or nnU-Net) and install a copy")
    p.add_argument("path")
    p.add_argument("--id", help="the id to install it under (default: its manifest's id)")
    for name in ("remove", "info"):
        p = ms.add_parser(name)
        p.add_argument("id")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("dataset", help="reviewed cases to an nnU-Net v2 training dataset")
    ds = s.add_subparsers(dest="dataset_command", parser_class=parser_class)
    p = ds.add_parser("export", help="CASES.csv (case_id,image,labels[,patient_id,reviewed_by]) -> "
                      "DIR/DatasetNNN_NAME (nnU-Net v2 raw dataset, five patient-level folds, provenance)")
    p.add_argument("cases")
    p.add_argument("--out", required=True, help="folder for the dataset (e.g. nnUNet_raw)")
    p.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset number, 1-999")
    p.add_argument("--name", default="LLN")
    p.add_argument("--pseudonymize", action="store_true",
                   help="rename cases with the site's keyed pseudonyms; no source paths in the dataset")
    p.add_argument("--allow-unreviewed", action="store_true", help="also export cases nobody marked reviewed")
    p.add_argument("--seed", type=int, default=0, help="seed of the five-fold split")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_dataset_export)
