"""The study report: numbers in its tables against the definitions (computed here by hand), the
HTML page (parsed, every plot embedded and identical to its PNG file), partial studies, bad input.

The synthetic study: two languages (es, de), each transcribed (WER) and translated (BLEU); a base,
one expert per (language, task), a joint baseline and two merge methods searched on validation.
"""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from statistics import fmean

import pytest
from PIL import Image

from speechmerge.errors import SpeechmergeError
from speechmerge.study.document import Cell, Column, Row, Table, latex_text, to_markdown
from speechmerge.study.report import write_report
from speechmerge.study.rows import ScoreRow, StudyFacts
from speechmerge.study.summary import Group, names_group

GROUPS = [
    ("es", "transcribe", "wer"),
    ("de", "transcribe", "wer"),
    ("es", "translate", "bleu"),
    ("de", "translate", "bleu"),
]
# test-stage in-domain scores, in GROUPS order
BASE = [0.50, 0.60, 10.0, 20.0]
EXPERT = [0.20, 0.30, 30.0, 40.0]
JOINT = [0.30, 0.40, 25.0, 30.0]
MERGES = {
    "task_arithmetic": ({"scale": 0.4}, [0.25, 0.45, 28.0, 30.0]),
    "ties": ({"scale": 0.5, "density": 0.2}, [0.30, 0.35, 26.0, 36.0]),
}
# validation: (setting, in-domain scores in GROUPS order)
SEARCH = {
    "task_arithmetic": [({"scale": 0.2}, [0.40, 0.50, 20.0, 25.0]), ({"scale": 0.4}, [0.26, 0.44, 27.0, 31.0])],
    "ties": [
        ({"scale": 0.3, "density": 0.2}, [0.35, 0.40, 22.0, 33.0]),
        ({"scale": 0.5, "density": 0.2}, [0.31, 0.36, 25.0, 35.0]),
    ],
}
CHOSEN = {"task_arithmetic": {"scale": 0.4}, "ties": {"scale": 0.5, "density": 0.2}}
OOD = {"base": 0.70, "task_arithmetic": 0.60, "ties": 0.50}  # es, pt-br style held-out set, WER
RETENTION = {
    "base": {"en": 0.20, "it": 0.50},
    "task_arithmetic": {"en": 0.25, "it": 0.55},
    "ties": {"en": 0.22, "it": 0.60},
}


def score(
    kind,
    model,
    stage,
    scope,
    language,
    task,
    metric,
    value,
    method=None,
    setting=None,
    selected=True,
    evaluation=None,
    utterances=12,
):
    return ScoreRow(
        job=f"{model}:{stage}:{evaluation or language}",
        model_kind=kind,
        model=model,
        method=method,
        setting=setting or {},
        stage=stage,
        selected=selected,
        scope=scope,
        evaluation=evaluation or f"{language}.{task}.{stage}",
        language=language,
        task=task,
        metric=metric,
        value=value,
        utterances=utterances,
    )


def in_domain(kind, model, stage, values, **labels):
    return [
        score(kind, model, stage, "in_domain", lang, task, metric, v, **labels)
        for (lang, task, metric), v in zip(GROUPS, values)
    ]


def study_rows(
    validation=True, test=True, baseline=True, ood=True, retention=True, experts=tuple(EXPERT)
) -> list[ScoreRow]:
    rows = []
    stages = [s for s, keep in (("validation", validation), ("test", test)) if keep]
    for stage in stages:
        rows += in_domain("base", "whisper-base", stage, BASE)
        for (lang, task, metric), value in zip(GROUPS, experts):
            rows.append(score("expert", f"{lang}-{task}", stage, "in_domain", lang, task, metric, value))
        if baseline:
            rows += in_domain("baseline", "joint", stage, JOINT)
    if validation:
        for method, points in SEARCH.items():
            for setting, values in points:
                rows += in_domain(
                    "merge",
                    f"{method}-{len(rows)}",
                    "validation",
                    values,
                    method=method,
                    setting=setting,
                    selected=setting == CHOSEN[method],
                )
    if test:
        for method, (setting, values) in MERGES.items():
            rows += in_domain("merge", f"{method}-chosen", "test", values, method=method, setting=setting)
        models = {
            "base": ("base", "whisper-base", {}),
            **{m: ("merge", f"{m}-chosen", {"method": m, "setting": MERGES[m][0]}) for m in MERGES},
        }
        for name, (kind, model, labels) in models.items():
            if ood:
                rows.append(
                    score(
                        kind,
                        model,
                        "test",
                        "out_of_domain",
                        "es",
                        "transcribe",
                        "wer",
                        OOD[name],
                        evaluation="es.heldout",
                        **labels,
                    )
                )
            if retention:
                for lang, value in RETENTION[name].items():
                    rows.append(
                        score(
                            kind,
                            model,
                            "test",
                            "retention",
                            lang,
                            "transcribe",
                            "wer",
                            value,
                            evaluation=f"{lang}.general",
                            **labels,
                        )
                    )
    return rows


def facts(**changes) -> StudyFacts:
    values = {
        "name": "synthetic",
        "recipe": {"methods": {"ties": {"scale": [0.3, 0.5]}}},
        "recipe_path": "recipes/synthetic.yaml",
        "command": "speechmerge study recipes/synthetic.yaml",
        "hardware": "2-core CPU (test)",
        "executor": "local",
        "started": "2026-11-23T10:00:00+00:00",
        "finished": "2026-11-23T11:02:05+00:00",
        "wall_seconds": 3725.0,
        "job_seconds": {"evaluate": 3000.0, "merge": 600.0, "train_expert": 125.0},
        "evaluation_time": {"evaluate": {"models": 6, "decoded": 768, "decode_seconds": 600.0}},
        "versions": {"speechmerge": "0.1.0", "torch": "2.13.0"},
        "hyperparameters": {"task_arithmetic": ["scale"], "ties": ["scale"]},
    }
    return StudyFacts(**{**values, **changes})


# ---- reading the output back -------------------------------------------------------------------


def markdown_table(markdown: str, title: str) -> dict[str, dict[str, str]]:
    """The Markdown table under `**title**`: {first cell: {header: cell}}, emphasis stripped."""
    block = markdown.split(f"**{title}**\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    header = [h.strip() for h in block[0].strip("|").split("|")]
    table = {}
    for line in block[2:]:
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        table[cells[0]] = dict(zip(header, cells))
    return table


def bold_cells(markdown: str, title: str) -> set[tuple[str, str]]:
    block = markdown.split(f"**{title}**\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    header = [h.strip() for h in block[0].strip("|").split("|")]
    marked = set()
    for line in block[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        marked |= {(cells[0].strip("*"), header[i]) for i, c in enumerate(cells) if re.fullmatch(r"\*\*[^*]+\*\*", c)}
    return marked


class PageParser(HTMLParser):
    """Collects image sources, external references and the text of table cells."""

    def __init__(self):
        super().__init__()
        self.images, self.external, self.cells, self.tags = [], [], [], []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs["src"])
        for key in ("src", "href"):
            if key in attrs and not attrs[key].startswith(("data:", "#")):
                self.external.append(attrs[key])
        self._in_cell = self._in_cell or tag in ("td", "th")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.cells.append(data)


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def s(metric: str, value: float) -> float:
    """Higher-is-better score, written here from the definition: 1 - WER, BLEU as it is."""
    return 1 - value if metric == "wer" else value


# ---- the full study --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "report"
    paths = write_report(facts(), study_rows(), out)
    return paths, paths["markdown"].read_text(encoding="utf-8")


MAIN = "Test sets: each merge method at the setting it chose on validation, with the references"


def test_main_table_averages_and_normalised_performance(full):
    _, markdown = full
    table = markdown_table(markdown, MAIN)
    metrics = [metric for _, _, metric in GROUPS]
    for method, (setting, values) in MERGES.items():
        row = table[method]
        assert row["chosen setting"] == ", ".join(f"{k}={v}" for k, v in sorted(setting.items()))
        assert row["ID WER % ↓"] == pct(fmean(values[:2]))
        assert row["ID BLEU ↑"] == f"{fmean(values[2:]):.1f}"
        assert row["OOD WER % ↓"] == pct(OOD[method])
        assert row["ret. en WER % ↓"] == pct(RETENTION[method]["en"])
        assert row["ret. other WER % ↓"] == pct(RETENTION[method]["it"])
        vs_experts = fmean(s(m, v) / s(m, e) for m, v, e in zip(metrics, values, EXPERT))
        gain = fmean((s(m, v) - s(m, b)) / (s(m, e) - s(m, b)) for m, v, e, b in zip(metrics, values, EXPERT, BASE))
        vs_base = fmean(s(m, v) / s(m, b) for m, v, b in zip(metrics, values, BASE))
        vs_joint = fmean(s(m, v) / s(m, j) for m, v, j in zip(metrics, values, JOINT))
        assert row["norm. vs experts % ↑"] == pct(vs_experts)
        assert row["norm. gain kept % ↑"] == pct(gain)
        assert row["norm. vs base % ↑"] == pct(vs_base)
        assert row["norm. vs joint % ↑"] == pct(vs_joint)
    # references: the experts are 100 % of themselves, the base keeps none of their gain
    assert table["experts (own sets)"]["norm. vs experts % ↑"] == "100.0"
    assert table["base (whisper-base)"]["norm. gain kept % ↑"] == "0.0"
    assert table["baseline: joint"]["norm. vs joint % ↑"] == "100.0"
    assert table["experts (own sets)"]["OOD WER % ↓"] == "–"


def test_best_merge_per_column_is_bold_and_references_never_are(full):
    _, markdown = full
    table = markdown_table(markdown, MAIN)
    bold = bold_cells(markdown, MAIN)
    lower_better = {"ID WER % ↓", "OOD WER % ↓", "ret. en WER % ↓", "ret. other WER % ↓"}
    for column in [
        "ID WER % ↓",
        "ID BLEU ↑",
        "OOD WER % ↓",
        "ret. en WER % ↓",
        "ret. other WER % ↓",
        "norm. vs experts % ↑",
        "norm. gain kept % ↑",
    ]:
        shown = {method: float(table[method][column]) for method in MERGES}
        best = (min if column in lower_better else max)(shown.values())
        assert {(m, column) for m, v in shown.items() if v == best} == {cell for cell in bold if cell[1] == column}, (
            column
        )
    assert not any(name.startswith(("base", "experts", "baseline")) for name, _ in bold)


def test_per_group_tables_hold_each_score(full):
    _, markdown = full
    wer = markdown_table(markdown, "in-domain WER % ↓")
    bleu = markdown_table(markdown, "in-domain BLEU ↑")
    for method, (_, values) in MERGES.items():
        assert (wer[method]["es"], wer[method]["de"]) == (pct(values[0]), pct(values[1]))
        assert (bleu[method]["es"], bleu[method]["de"]) == (f"{values[2]:.1f}", f"{values[3]:.1f}")
        assert wer[method]["vs base % ↑"] == pct(
            fmean([(1 - values[0]) / (1 - BASE[0]), (1 - values[1]) / (1 - BASE[1])])
        )
    assert wer["experts (own sets)"]["es"] == pct(EXPERT[0])
    retention = markdown_table(markdown, "retention WER % ↓")
    assert retention["ties"]["it"] == pct(RETENTION["ties"]["it"])
    assert retention["ties"]["mean"] == pct(fmean(RETENTION["ties"].values()))
    assert "Utterances per group: de 12, es 12." in markdown


def test_id_against_ood_table(full):
    _, markdown = full
    table = markdown_table(markdown, "In-domain (ID) against out-of-domain (OOD) averages")
    for method, (_, values) in MERGES.items():
        inside = fmean(values[:2])
        assert table[method]["OOD-ID WER pp ↓"] == pct(OOD[method] - inside)
    assert "experts (own sets)" in table  # scored in-domain only: shown with its OOD cells empty
    assert table["experts (own sets)"]["OOD WER % ↓"] == "–"


def test_validation_search_table_marks_the_chosen_settings(full):
    _, markdown = full
    lines = [
        line for line in markdown.split("**Validation: every setting searched", 1)[1].split("\n\n")[1].splitlines()[2:]
    ]
    chosen = {}
    for line in lines:
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        if cells[0] in SEARCH:
            chosen[(cells[0], cells[1])] = (cells[2], cells[3])
    for method, points in SEARCH.items():
        for setting, values in points:
            key = (method, ", ".join(f"{k}={v}" for k, v in sorted(setting.items())))
            # both chosen settings take the larger of the two scales searched: the grid's edge
            assert chosen[key] == ("✓ (grid edge)" if setting == CHOSEN[method] else "", pct(fmean(values[:2])))
    assert "Grid edge: the chosen value is the smallest or largest searched" in markdown
    assert "task_arithmetic: scale = 0.4 (largest of 2)" in markdown


def test_a_chosen_setting_is_flagged_only_at_the_edge_of_a_numeric_axis():
    from speechmerge.study.report import grid_edges
    from speechmerge.study.summary import Line

    def lines(chosen, points):
        return [Line("m", "merge", setting=p, chosen=p == chosen) for p in points]

    grid = [{"scale": s, "density": 0.2, "orthogonaliser": o} for s in (0.5, 1.0, 2.0) for o in ("svd", "ns")]
    assert grid_edges(lines(grid[2], grid)) == {}  # scale 1.0: inside; density searched once; strings ignored
    assert grid_edges(lines(grid[5], grid)) == {"m": ["scale = 2 (largest of 3)"]}
    assert grid_edges(lines(grid[0], grid)) == {"m": ["scale = 0.5 (smallest of 3)"]}
    flags = [{"scale": 1.0, "rescale": b} for b in (True, False)]
    assert grid_edges(lines(flags[0], flags)) == {}  # a boolean axis has no edge


def test_a_chosen_value_at_the_parameters_declared_bound_is_not_a_grid_edge():
    """SCE declares select_topk ≤ 1: a grid cannot go past 1, so choosing it is no edge; its λ
    (declared > 0, no upper bound) at the top of the grid still is."""
    from speechmerge.merging.registry import get_method
    from speechmerge.study.report import grid_edges
    from speechmerge.study.summary import Line

    assert next(p for p in get_method("sce").params if p.name == "select_topk").le == 1
    grid = [{"select_topk": k, "scale": s} for k in (0.1, 0.5, 1.0) for s in (0.5, 1.0, 1.5)]

    def edges(chosen):
        return grid_edges([Line("sce", "merge", setting=p, chosen=p == chosen) for p in grid])

    assert edges({"select_topk": 1.0, "scale": 1.0}) == {}
    assert edges({"select_topk": 1.0, "scale": 1.5}) == {"sce": ["scale = 1.5 (largest of 3)"]}
    assert edges({"select_topk": 0.1, "scale": 1.0}) == {"sce": ["select_topk = 0.1 (smallest of 3)"]}


def test_header_states_how_the_numbers_were_made(full):
    _, markdown = full
    study = markdown_table(markdown, "Study")
    assert study["command"]["value"] == "speechmerge study recipes/synthetic.yaml"
    assert study["hardware"]["value"] == "2-core CPU (test)"
    assert study["wall time"]["value"] == "3725 s (1 h 02 min 05 s)"
    assert study["version: torch"]["value"] == "2.13.0"
    jobs = markdown_table(markdown, "Job time per kind (sum over jobs; may exceed wall time with parallel workers)")
    assert jobs["evaluate"]["share %"] == f"{100 * 3000 / 3725:.1f}"
    evaluation = markdown_table(markdown, "Evaluation time per model (decoding only; cached predictions cost nothing)")
    assert evaluation["evaluate"]["models"] == "6"
    assert evaluation["evaluate"]["clips decoded per model"] == "128.0"  # 768 clips over 6 models
    assert evaluation["evaluate"]["time per model"] == "100 s (01 min 40 s)"  # 600 s over 6 models
    assert evaluation["evaluate"]["s per clip"] == f"{600 / 768:.3f}"


def test_evaluation_time_sums_each_kinds_finished_jobs_decoding():
    from speechmerge.study.scores import evaluation_times

    def job(kind, status, decoded, seconds):
        timing = {"utterances": 8, "decoded": decoded, "from_cache": 8 - decoded, "decode_seconds": seconds}
        return {"kind": kind, "status": status, "result": {"timing": timing}}

    jobs = [
        job("evaluate", "done", 8, 4.0),
        job("evaluate", "done", 6, 2.0),
        job("validate", "done", 8, 1.5),
        job("validate", "failed", 8, 9.0),  # no result counts from a failed job
        {"kind": "expert", "status": "done", "result": {"model_path": "x"}},  # training: no decoding
    ]
    times = evaluation_times(jobs)
    assert set(times) == {"evaluate", "validate"}
    assert (times["evaluate"].models, times["evaluate"].decoded, times["evaluate"].decode_seconds) == (2, 14, 6.0)
    assert (times["validate"].models, times["validate"].decoded, times["validate"].decode_seconds) == (1, 8, 1.5)


def test_pngs_are_valid_and_the_html_embeds_every_one_and_nothing_external(full):
    paths, _ = full
    plots = {name: path for name, path in paths.items() if name not in ("markdown", "html", "latex")}
    assert set(plots) == {"ranking", "heatmap", "id_vs_ood", "hyperparameter-scale"}
    for path in plots.values():
        assert path.stat().st_size > 0
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    parser = PageParser()
    parser.feed(paths["html"].read_text(encoding="utf-8"))
    embedded = sorted(base64.b64decode(src.split(",", 1)[1]) for src in parser.images)
    assert all(src.startswith("data:image/png;base64,") for src in parser.images)
    assert embedded == sorted(path.read_bytes() for path in plots.values())
    assert parser.external == [] and "script" not in parser.tags and "link" not in parser.tags
    assert pct(fmean(MERGES["ties"][1][:2])) in parser.cells  # the tables are in the page too


def test_the_report_folder_is_readable_by_others(full):
    paths, _ = full
    assert paths["markdown"].parent.stat().st_mode & 0o055 == 0o055


def test_markdown_links_every_plot_file(full):
    paths, markdown = full
    for name, path in paths.items():
        if name not in ("markdown", "html", "latex"):
            assert f"](plots/{path.name})" in markdown


# ---- partial studies -------------------------------------------------------------------------------


def test_without_baseline_validation_or_ood(tmp_path):
    paths = write_report(facts(), study_rows(validation=False, baseline=False, ood=False), tmp_path / "r")
    markdown = paths["markdown"].read_text(encoding="utf-8")
    header = markdown.split(f"**{MAIN}**\n\n", 1)[1].splitlines()[0]
    assert "vs joint" not in header and "OOD" not in header and "norm. vs experts" in header
    assert "Hyper-parameter curves (validation sets): not drawn (no validation scores of merges yet)" in markdown
    assert "In-domain against out-of-domain: one point per model (grey squares: references): not drawn" in markdown
    assert set(paths) == {"markdown", "html", "latex", "ranking", "heatmap"}
    assert sorted(p.name for p in (tmp_path / "r" / "plots").iterdir()) == ["heatmap.png", "ranking.png"]


def test_a_study_stopped_during_validation_still_renders(tmp_path):
    paths = write_report(facts(finished=None), study_rows(test=False), tmp_path / "r")
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert "No test-set scores yet" in markdown and "not finished" in markdown
    assert set(paths) == {"markdown", "html", "latex", "hyperparameter-scale"}
    assert "Method ranking" in markdown and "not drawn" in markdown


def test_merge_scored_on_only_some_groups_is_marked_partial(tmp_path):
    rows = [r for r in study_rows() if not (r.method == "ties" and r.stage == "test" and r.language == "de")]
    markdown = write_report(facts(), rows, tmp_path / "r")["markdown"].read_text(encoding="utf-8")
    ties = markdown_table(markdown, MAIN)["ties"]
    assert ties["ID WER % ↓"] == pct(MERGES["ties"][1][0]) + "†"
    assert "† averaged over fewer groups" in markdown


def test_experts_scoring_zero_leave_normalised_scores_undefined_and_their_plots_skipped(tmp_path):
    paths = write_report(
        facts(), study_rows(validation=False, experts=(1.0, 1.2, 0.0, 0.0)), tmp_path / "r"
    )  # s(expert) <= 0 everywhere
    markdown = paths["markdown"].read_text(encoding="utf-8")
    for method in MERGES:
        row = markdown_table(markdown, MAIN)[method]
        assert row["norm. vs experts % ↑"] == row["norm. gain kept % ↑"] == "–"
        assert row["norm. vs base % ↑"] != "–"
    assert "ranking" not in paths and "heatmap" not in paths
    assert markdown.count("not drawn (no merge has a defined normalised score") == 2


def test_each_group_takes_its_own_expert_even_when_another_scores_better_there(tmp_path):
    rows = study_rows(validation=False) + [
        score("expert", "de-transcribe", "test", "in_domain", "es", "transcribe", "wer", 0.10)
    ]
    markdown = write_report(facts(), rows, tmp_path / "r")["markdown"].read_text(encoding="utf-8")
    assert markdown_table(markdown, "in-domain WER % ↓")["experts (own sets)"]["es"] == pct(EXPERT[0])
    assert "each group scored by the expert trained for it (named for it)." in markdown


def test_groups_no_expert_is_named_for_take_the_best_expert_and_say_so(tmp_path):
    others = [
        score("expert", name, "test", "retention", "en", "transcribe", "wer", wer, evaluation="en.general")
        for name, wer in (("es-transcribe", 0.30), ("de-transcribe", 0.25))
    ]
    markdown = write_report(facts(), study_rows(validation=False) + others, tmp_path / "r")["markdown"].read_text(
        encoding="utf-8"
    )
    assert markdown_table(markdown, "retention WER % ↓")["experts (own sets)"]["en"] == "25.0"
    assert (
        "groups no expert is named for (retention 1) take the best of the experts scored there (an oracle)" in markdown
    )


@pytest.mark.parametrize(
    ("expert", "language", "task", "domain", "named"),
    [
        ("es", "es", "transcribe", "-", True),
        ("es-translate", "es", "translate", "-", True),
        ("es-translate", "es", "transcribe", "-", False),
        ("law", "pt", "transcribe", "law", True),
        ("pt-br", "pt-br", "transcribe", "-", True),
        ("pt", "pt-br", "transcribe", "-", False),
        ("my-finetune", "es", "transcribe", "-", False),
    ],
)
def test_an_expert_is_named_for_a_group_by_its_labels(expert, language, task, domain, named):
    assert names_group(expert, Group("in_domain", "set", language, task, domain)) is named


def test_a_rewrite_replaces_the_previous_report_whole(tmp_path):
    out = tmp_path / "r"
    write_report(facts(), study_rows(), out)
    paths = write_report(facts(), study_rows(ood=False), out)
    assert not (out / "plots" / "id_vs_ood.png").exists() and "id_vs_ood" not in paths
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


# ---- bad input -------------------------------------------------------------------------------------


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_empty_rows_give_one_line_and_write_nothing(tmp_path):
    with pytest.raises(SpeechmergeError) as excinfo:
        write_report(facts(), [], tmp_path / "r")
    assert "study synthetic: no scores to report" in one_line_error(excinfo)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda rows: rows + [rows[0]], "given twice"),
        (lambda rows: rows + [rows[0].model_copy(update={"metric": "meteor"})], "unknown metric 'meteor'"),
        (
            lambda rows: rows + [rows[0].model_copy(update={"metric": "cer", "value": float("nan")})],
            "not a finite non-negative score",
        ),
        (lambda rows: rows + [rows[0].model_copy(update={"model": "whisper-small", "metric": "cer"})], "2 base models"),
        (
            lambda rows: (
                rows
                + [
                    r.model_copy(update={"setting": {"scale": 9}})
                    for r in rows
                    if r.method == "ties" and r.stage == "test"
                ]
            ),
            "more than one selected setting",
        ),
    ],
)
def test_inconsistent_rows_give_one_line(tmp_path, change, expected):
    with pytest.raises(SpeechmergeError) as excinfo:
        write_report(facts(), change(study_rows(validation=False)), tmp_path / "r")
    assert expected in one_line_error(excinfo)
    assert not (tmp_path / "r").exists()


def test_a_folder_holding_other_files_is_refused_and_left_alone(tmp_path):
    (tmp_path / "study.sqlite").write_text("store")
    with pytest.raises(SpeechmergeError) as excinfo:
        write_report(facts(), study_rows(), tmp_path)
    assert "study.sqlite" in one_line_error(excinfo)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.sqlite"]


def test_a_failure_while_writing_keeps_the_previous_report(tmp_path, monkeypatch):
    out = tmp_path / "r"
    write_report(facts(), study_rows(validation=False), out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr("speechmerge.study.report.to_html", broken)
    with pytest.raises(OSError):
        write_report(facts(name="changed"), study_rows(), out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


# ---- rendering -------------------------------------------------------------------------------------


def test_ties_on_the_displayed_value_are_all_bold_and_direction_is_respected():
    table = Table("t", [Column("model"), Column("WER", higher_is_better=False), Column("BLEU", higher_is_better=True)])
    table.rows = [
        Row([Cell("a"), Cell("10.0", 10.0), Cell("5.0", 5.0)]),
        Row([Cell("b"), Cell("10.0", 10.0), Cell("7.0", 7.0)]),
        Row([Cell("c"), Cell("12.0", 12.0), Cell("6.0", 6.0)]),
        Row([Cell("ref"), Cell("1.0", 1.0), Cell("99.0", 99.0)], competes=False),
    ]
    assert table.best() == {(0, 1), (1, 1), (1, 2)}
    assert bold_cells(to_markdown("x", [table]), "t") == {("a", "WER"), ("b", "WER"), ("b", "BLEU")}


def test_latex_holds_every_table_escaped_with_the_same_bold_cells(full):
    paths, markdown = full
    latex = paths["latex"].read_text(encoding="utf-8")
    assert latex.count(r"\begin{tabular}") == len(re.findall(r"^\*\*[^*\n]+\*\*\n\n\| ", markdown, flags=re.MULTILINE))
    main = latex.split(r"\caption{" + MAIN + "}", 1)[1].split(r"\end{tabular}", 1)[0]
    ties = next(line for line in main.splitlines() if line.startswith("ties"))
    tied_wer = pct(fmean(MERGES["ties"][1][:2]))
    assert ties.split(" & ")[2] == rf"\textbf{{{tied_wer}}}"
    assert r"task\_arithmetic & scale=0.4" in main and r"\textit{base (whisper-base)}" in main
    assert r"ID WER \% $\downarrow$" in main


def test_latex_text_escapes_specials_and_writes_symbols_as_maths():
    assert latex_text("a_b 50% & #1 {x} ↑ 3.0† ✓") == r"a\_b 50\% \& \#1 \{x\} $\uparrow$ 3.0$^\dagger$ $\checkmark$"
