"""The `llnassist` command line: thin; every command calls the library.

Exit status: 0 success; 2 bad input or usage (one `error:` line on stderr, no traceback);
1 unexpected internal failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from .errors import InputError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: one line, exit 2
        sys.stderr.write(f"error: {message}; see `{self.prog} --help`\n")
        sys.exit(2)


def _progress(quiet: bool):
    def report(stage: str, fraction: float | None = None, detail: str = ""):
        if quiet:
            return
        pct = f"{100 * fraction:5.1f}% " if fraction is not None else ""
        sys.stderr.write(f"[llnassist] {pct}{stage}{(': ' + detail) if detail else ''}\n")
        sys.stderr.flush()

    return report


def cmd_phantom(a) -> int:
    from . import phantom

    for name, value, lo, hi in (("--size", a.size, 64, 1024), ("--slices", a.slices, 5, 200),
                                ("--nodes", a.nodes, 0, 40)):
        if value is not None and not lo <= value <= hi:
            raise InputError(f"{name} {value} is outside what a phantom can have: give {lo}-{hi}")
    if a.spacing is not None and not 0.2 <= a.spacing <= 5.0:
        raise InputError(f"--spacing {a.spacing} mm is not an MRI pixel size: give 0.2-5 mm (1.3 mm with --size 384 "
                         "is a 500 mm field of view)")
    ph = phantom.generate(a.seed, size=a.size, slices=a.slices, spacing=a.spacing, n_nodes=a.nodes)
    phantom.write(ph, a.out, dicom=a.dicom, seed=a.seed)
    t = ph.truth
    print(f"phantom seed {a.seed}: {ph.image.shape[2]}x{ph.image.shape[1]}x{ph.image.shape[0]} voxels, "
          f"{len(t['nodes'])} nodes, patient {t['patient_status']} -> {a.out}")
    return 0


def cmd_train(a) -> int:
    if a.framework == "nnunet":
        from .nnunet.train import train as train_nnunet

        if not a.dataset:
            raise InputError("--framework nnunet needs --dataset DIR (a DatasetNNN_NAME folder from `llnassist "
                             "dataset export`)")
        device = a.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        folder = train_nnunet(a.dataset, a.out, configuration=a.configuration, folds=a.folds, device=device,
                              epochs=a.epochs, iterations_per_epoch=a.iterations_per_epoch, plan=a.plan,
                              processes=a.processes, data_description=a.data_description or "",
                              synthetic=a.synthetic)
        print(f"trained model: {folder} (use it with --model {folder})")
        return 0
    if a.dataset:
        raise InputError("--dataset is for --framework nnunet; the LLNAssist phantom model trains on phantoms")
    from .model.train import TrainConfig, export_weights, train

    cfg = TrainConfig(out=a.out, n_cases=a.cases, first_seed=a.first_seed, seed=a.seed,
                      iterations=a.iterations, batch=a.batch, patch=a.patch, lr=a.lr,
                      device=a.device, workers=a.workers, max_seconds=a.max_seconds)
    train(cfg, resume=not a.restart, log=lambda m: print(m, flush=True))
    if a.export:
        cmd = "llnassist " + " ".join(sys.argv[1:])
        man = export_weights(a.out, a.export, a.model_id, a.model_version, cmd)
        print(f"exported {man['id']} {man['version']} sha256 {man['sha256']} -> {a.export}")
    return 0


def cmd_evaluate(a) -> int:
    from .evaluate import evaluate_model

    if a.cases and a.seeds:
        raise InputError("give either --cases (labelled cases) or --seeds (phantoms), not both")
    seeds = None if a.cases else _parse_seeds(a.seeds or "900000-900019")
    res = evaluate_model(a.model, seeds, device=a.device, write_manifest=a.write_manifest,
                         progress=_progress(a.quiet), cases_csv=a.cases)
    if a.out:
        from .atomic import write_text

        write_text(a.out, json.dumps(res, indent=2, default=str) + "\n")
    print(json.dumps(res["summary"], indent=2))
    return 0


def _parse_seeds(text: str) -> list[int]:
    out = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = part.split("-")
                out.extend(range(int(lo), int(hi) + 1))
            elif part.strip():
                out.append(int(part))
    except ValueError:
        raise InputError(f"cannot parse seeds {text!r}; use e.g. 900000-900019 or 5,6,7") from None
    return out


def cmd_analyze(a) -> int:
    from .pipeline import AnalysisOptions, analyze

    opts = AnalysisOptions(model=a.model, device=a.device, post_treatment=a.post_treatment,
                           sex=a.sex, neoadjuvant_radiotherapy=_yesno(a.neoadjuvant_radiotherapy),
                           series=a.series, radiomics=not a.no_radiomics, key_images=not a.no_report_images,
                           radiomics_engine=a.radiomics_engine, force=a.force, patient_name=a.patient_name,
                           score_file=a.score_file, dicom_reference=a.dicom_reference, pseudonymize=a.pseudonymize)
    from .keyimages import best_available

    if a.dicomweb or a.study or a.store:
        return _analyze_dicomweb(a, opts, best_available)
    if not a.image:
        raise InputError("give the IMAGE to analyse, or --dicomweb URL --study UID")
    summary = analyze(a.image, a.out, opts, progress=_progress(a.quiet), renderer=best_available)
    if summary["domain"].get("notice"):
        sys.stderr.write(f"warning: {summary['domain']['notice']}\n")
    if not summary.get("dicom", {}).get("written", True):
        print(f"no DICOM SEG/SR: {summary['dicom']['reason']}")
    largest = f", largest short axis {summary['max_short_axis_mm']} mm" if summary["n_nodes"] else ""
    print(f"patient LLN status: {summary['patient_status']} ({summary['n_positive']} of {summary['n_nodes']} "
          f"nodes positive{largest}) -> {a.out}")
    return 0


def _analyze_dicomweb(a, opts, renderer) -> int:
    from .dicomweb import analyze_study

    if a.image:
        raise InputError("give either IMAGE or --dicomweb URL --study UID, not both")
    if not (a.dicomweb and a.study):
        raise InputError("--dicomweb URL and --study STUDY_UID go together (--store needs both)")
    if a.dicom_reference:
        raise InputError("--dicom-reference is for volume files; a PACS study is DICOM already")
    if a.store and a.pseudonymize:
        raise InputError("--store puts results into the patient's study; a pseudonymised export must not go there - "
                         "drop one of --store and --pseudonymize")
    summary = analyze_study(a.dicomweb, a.study, a.out, opts, series_uid=a.series, do_store=a.store,
                            progress=_progress(a.quiet), renderer=renderer)
    rec = summary["dicomweb"]
    print(f"patient LLN status: {summary['patient_status']} ({summary['n_positive']} of {summary['n_nodes']} nodes "
          f"positive) -> {a.out}")
    if a.store:
        if rec["failed"]:
            raise InputError(f"the PACS stored {len(rec['stored'])} and refused {len(rec['failed'])} of the SEG and SR "
                             f"(refused: {', '.join(rec['failed'])}); the results are in {a.out}")
        print(f"stored in study {a.study}: {', '.join(rec['stored'])}")
    return 0


def _yesno(v):
    return None if v is None else v == "yes"


def cmd_deidentify(a) -> int:
    from .deidentify import series_folder

    res = series_folder(a.dicom, a.out, a.series)
    print(f"{res['images']} images of {res['series']} de-identified -> {res['out']}")
    return 0


def cmd_measure(a) -> int:
    from .pipeline import measure_file

    rows = measure_file(a.labelmap)
    cols = ["label", "short_axis_mm", "long_axis_mm", "volume_mm3"]
    text = ",".join(cols) + "\n" + "".join(
        ",".join(str(r[c]) if c == "label" else f"{r[c]:.3f}" for c in cols) + "\n" for r in rows)
    if a.out:
        from .atomic import write_text

        write_text(a.out, text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_radiomics(a) -> int:
    from .pipeline import radiomics_file

    res = radiomics_file(a.image, a.mask, label=a.label, engine=a.engine, sex=a.sex,
                         neoadjuvant_radiotherapy=_yesno(a.neoadjuvant_radiotherapy))
    text = json.dumps(res, indent=2) + "\n"
    if a.out:
        from .atomic import write_text

        write_text(a.out, text)
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llnassist", description="Lateral lymph node assessment on axial T2-weighted MRI. "
                "The bundled model was trained on synthetic phantoms only: not for clinical use.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    s = sub.add_parser("phantom", help="write a synthetic pelvic T2WI case with ground truth")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--size", type=int, help="in-plane matrix (default: random 320-450)")
    s.add_argument("--slices", type=int, help="number of slices (default: random 24-40)")
    s.add_argument("--nodes", type=int, help="number of nodes (default: random 0-6)")
    s.add_argument("--spacing", type=float, metavar="MM", help="in-plane pixel size (default: random, the field of "
                   "view 240 mm or more); a large one leaves air around the body")
    s.add_argument("--dicom", action="store_true", help="also write the image as a DICOM MR series in dicom/")
    s.set_defaults(func=cmd_phantom)

    s = sub.add_parser("analyze", help="find, classify, measure and score lateral lymph nodes")
    s.add_argument("image", nargs="?", help="NIfTI/NRRD/MHA volume, or a DICOM folder, DICOMDIR or study .zip")
    s.add_argument("--dicomweb", metavar="URL", help="pull the study from this PACS (DICOMweb root); credentials "
                   "from LLNASSIST_DICOMWEB_USER/PASSWORD or a netrc file, never the command line")
    s.add_argument("--study", metavar="STUDY_UID", help="with --dicomweb: the study to analyse")
    s.add_argument("--store", action="store_true", help="with --dicomweb: store the SEG and SR back into the study")
    s.add_argument("--out", required=True)
    s.add_argument("--model", default=None, help="bundled model id or model folder (default: bundled)")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.add_argument("--series", help="DICOM SeriesInstanceUID, series number or description: overrides the choice "
                   "of the axial T2 series")
    s.add_argument("--dicom-reference", metavar="SERIES_DIR",
                   help="for a volume file: the DICOM series it was made from, which the DICOM SEG and SR reference")
    s.add_argument("--force", action="store_true",
                   help="analyse even what the domain gate refuses; every output is marked out of domain")
    s.add_argument("--patient-name", action="store_true",
                   help="name the patient in summary and report (default: a pseudonymous reference only)")
    s.add_argument("--pseudonymize", action="store_true",
                   help="research export: patient name/ID replaced by the site's pseudonym, dates shifted, UIDs "
                   "replaced, in every output (DICOM PS3.15 basic profile; key: ~/.llnassist/pseudonym.key)")
    s.add_argument("--post-treatment", action="store_true",
                   help="restaging after neoadjuvant therapy: Lateral Node Consortium cut-offs")
    s.add_argument("--sex", choices=["female", "male"],
                   help="with --neoadjuvant-radiotherapy: also the clinical-radiomics score")
    s.add_argument("--neoadjuvant-radiotherapy", choices=["yes", "no"])
    s.add_argument("--no-radiomics", action="store_true", help="skip the radiomics score")
    s.add_argument("--radiomics-engine", choices=["auto", "pyradiomics", "native"], default="auto",
                   help="native: the project's own implementation of the score's features (no PyRadiomics)")
    s.add_argument("--no-report-images", action="store_true", help="report without key images")
    s.add_argument("--score-file", help="a site's refitted radiomics score (JSON from `llnassist cohort refit`)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_analyze)

    s = sub.add_parser("measure", help="short/long axis and volume per label value of a label map")
    s.add_argument("labelmap")
    s.add_argument("--out", help="CSV path (default: stdout)")
    s.set_defaults(func=cmd_measure)

    s = sub.add_parser("radiomics",
                       help="radiomics features and the radiomics score of Yoo et al. (Sci Rep 2025) for one mask")
    s.add_argument("image")
    s.add_argument("mask")
    s.add_argument("--label", type=int, default=None, help="mask label value (default: all non-zero)")
    s.add_argument("--engine", choices=["auto", "pyradiomics", "native"], default="auto")
    s.add_argument("--sex", choices=["female", "male"])
    s.add_argument("--neoadjuvant-radiotherapy", choices=["yes", "no"])
    s.add_argument("--out", help="JSON path (default: stdout)")
    s.set_defaults(func=cmd_radiomics)

    s = sub.add_parser("train", help="train the phantom model, or with --framework nnunet a site model on an "
                       "exported dataset (seeded, resumable)")
    s.add_argument("--out", required=True, help="checkpoint folder (resumed if it holds a checkpoint); with "
                   "--framework nnunet the folder for nnU-Net's preprocessed data and results")
    s.add_argument("--framework", choices=["llnassist", "nnunet"], default="llnassist")
    s.add_argument("--dataset", help="nnunet: the DatasetNNN_NAME folder written by `llnassist dataset export`")
    s.add_argument("--configuration", default="3d_fullres", choices=["3d_fullres", "2d"], help="nnunet")
    s.add_argument("--folds", default="0-4", help="nnunet: folds to train, e.g. 0-4 or 0")
    s.add_argument("--epochs", type=int, default=1000, help="nnunet (nnU-Net's default 1000)")
    s.add_argument("--iterations-per-epoch", type=int, default=250, help="nnunet (nnU-Net's default 250)")
    s.add_argument("--plan", choices=["default", "tiny"], default="default",
                   help="nnunet: tiny = 16x64x64 patches, 8-64 features (tests and smoke runs only)")
    s.add_argument("--processes", type=int, default=2, help="nnunet: worker processes for preprocessing and "
                   "data augmentation")
    s.add_argument("--data-description", help="nnunet: what the cases are, for the model's manifest")
    s.add_argument("--synthetic", action="store_true", help="nnunet: the cases are synthetic phantoms")
    s.add_argument("--cases", type=int, default=120)
    s.add_argument("--first-seed", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--iterations", type=int, default=4000)
    s.add_argument("--batch", type=int, default=16)
    s.add_argument("--patch", type=int, default=192)
    s.add_argument("--lr", type=float, default=2e-3)
    s.add_argument("--device", default="auto")
    s.add_argument("--workers", type=int, default=0, help="processes generating phantoms")
    s.add_argument("--max-seconds", type=float, default=0.0, help="stop with a checkpoint after this long")
    s.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    s.add_argument("--export", help="write model.pt + manifest.json to this folder when done")
    s.add_argument("--model-id", default="llnassist-phantom-dynunet25d")
    s.add_argument("--model-version", default="1.0.0")
    s.set_defaults(func=cmd_train)

    from .cli_cohort import add_parsers as add_cohort_parsers
    from .cli_models import add_parsers as add_model_parsers
    from .cli_study import add_parsers as add_study_parsers

    add_study_parsers(sub, _Parser)
    add_cohort_parsers(sub, _Parser)
    add_model_parsers(sub, _Parser)

    s = sub.add_parser("deidentify", help="write a DICOM series de-identified (the images a --pseudonymize SEG and "
                       "SR reference)")
    s.add_argument("dicom", help="DICOM folder, DICOMDIR or study .zip")
    s.add_argument("--out", required=True)
    s.add_argument("--series", help="SeriesInstanceUID, number or description (default: the axial T2)")
    s.set_defaults(func=cmd_deidentify)

    s = sub.add_parser("evaluate", help="evaluate a model end to end on labelled cases or unseen phantom seeds")
    s.add_argument("--model", default=None)
    s.add_argument("--cases", help="CASES.csv (case_id,image,labels) of labelled cases, as for `dataset export`")
    s.add_argument("--seeds", default=None, help="phantom seeds (default 900000-900019 when no --cases)")
    s.add_argument("--device", default="auto")
    s.add_argument("--write-manifest", action="store_true", help="store the results in the model manifest")
    s.add_argument("--out", help="JSON file with the per-case results")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_evaluate)
    return p


def _terminate(signum, frame):
    # Cancel from the Slicer module sends SIGTERM: unwind like Ctrl-C so staged output is removed.
    raise KeyboardInterrupt


def log_path() -> Path:
    """Where warnings of the libraries LLNAssist uses go (ITK, VTK, numpy, torch): not the terminal."""
    import tempfile

    return Path(os.environ.get("LLNASSIST_LOG") or Path(tempfile.gettempdir()) / "llnassist.log")


def _send_library_output_to_log():
    """Native libraries (ITK, VTK) print warnings on file descriptor 2 and Python warnings go to
    stderr: both go to the log. The user's terminal keeps LLNAssist's own lines (progress, error:),
    which are written through sys.stderr, now a copy of the original descriptor."""
    import logging
    import warnings

    try:
        log = open(log_path(), "a", encoding="utf-8", buffering=1)
    except OSError:
        return None
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                         errors="backslashreplace")
    saved = os.dup(2)
    os.dup2(log.fileno(), 2)
    previous = sys.stderr
    sys.stderr = terminal
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logging.getLogger("py.warnings").addHandler(handler)
    logging.getLogger("py.warnings").propagate = False
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    log.write(f"--- llnassist {' '.join(sys.argv[1:])}\n")

    def restore():
        logging.captureWarnings(False)
        logging.getLogger("py.warnings").removeHandler(handler)
        sys.stderr.flush()
        sys.stderr = previous
        os.dup2(saved, 2)
        os.close(saved)
        terminal.close()
        log.close()

    return restore


def main(argv=None) -> int:
    import signal

    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        where = f"llnassist {args.command}" if getattr(args, "command", None) else "llnassist"
        sys.stderr.write(f"error: no command given; see `{where} --help`\n")
        return 2
    restore = _send_library_output_to_log()
    try:
        return _run(args)
    finally:
        if restore:
            restore()


def _run(args) -> int:
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        sys.stderr.write(f"error: {str(exc).splitlines()[0] if str(exc) else 'bad input'}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted; no output was published\n")
        return 130
    except Exception as exc:  # unexpected: keep the details for a bug report, but not on screen
        import tempfile

        log = Path(tempfile.gettempdir()) / "llnassist-crash.log"  # TMPDIR/TEMP/TMP; no /tmp on Windows
        try:
            log.write_text(traceback.format_exc(), encoding="utf-8")
            where = f"; details in {log}"
        except OSError:
            where = ""
        sys.stderr.write(f"internal error: {exc.__class__.__name__}: {exc}{where}; please report it\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
