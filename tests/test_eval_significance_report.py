"""A study report from a store with per-utterance statistics: every score with its interval, each
merge marked better / worse / no different from the reference after Holm, the top group, the
minimum detectable difference per group, error bars on the ranking (the HTML parsed back)."""

from __future__ import annotations

import io
import re
import zlib
from html.parser import HTMLParser

import numpy as np
import pytest

from speechmerge.evaluation.metrics import ops_counts, sentence_statistics
from speechmerge.study.report import write_report
from speechmerge.study.rows import ScoreRow, StudyFacts

N = 60
WORDS = "uno dos tres cuatro cinco seis siete ocho nueve diez once doce".split()
# error rate of each model on the transcription groups, word-noise rate on the translation group
MODELS = {
    ("base", "whisper-base"): 0.5,
    ("expert", "es-transcribe"): 0.1,
    ("expert", "de-transcribe"): 0.1,
    ("expert", "es-translate"): 0.1,
    ("baseline", "joint"): 0.3,
    ("merge", "good"): 0.05,
    ("merge", "bad"): 0.6,
}
GROUPS = [("es", "transcribe", "wer"), ("de", "transcribe", "wer"), ("es", "translate", "bleu")]


def _statistics(metric: str, rate: float, seed: int, references: list[str]) -> dict:
    rng = np.random.default_rng(seed)
    ids = [f"u{i}" for i in range(N)]
    if metric == "wer":
        ops = ["".join("S" if e else "C" for e in rng.random(10) < rate) for _ in range(N)]
        counts = [ops_counts(o) for o in ops]
        stats = [[c.substitutions, c.deletions, c.insertions, c.reference_length] for c in counts]
        return {"metric": "wer", "ids": ids, "speakers": [None] * N, "stats": stats, "ops": ops}
    hypotheses = [" ".join(w if rng.random() > rate else "x" for w in r.split()) for r in references]
    stats = sentence_statistics("bleu", hypotheses, references)
    return {
        "metric": "bleu",
        "ids": ids,
        "speakers": [None] * N,
        "stats": stats,
        "hypotheses": hypotheses,
        "references": references,
    }


def study_rows(same_as_joint: bool = True) -> list[ScoreRow]:
    from speechmerge.evaluation.statistics import UtteranceStatistics

    rng = np.random.default_rng(0)
    references = [" ".join(rng.choice(WORDS, size=9)) for _ in range(N)]
    models = dict(MODELS)
    if same_as_joint:
        models[("merge", "same")] = models[("baseline", "joint")]
    rows = []
    for (kind, model), rate in models.items():
        # "same" is scored on exactly the joint baseline's outputs
        seed_of = "joint" if model == "same" else model
        for index, (language, task, metric) in enumerate(GROUPS):
            if kind == "expert" and model != f"{language}-{task}":
                continue
            stats = _statistics(metric, rate, zlib.crc32(f"{seed_of}:{index}".encode()), references)
            value = UtteranceStatistics.model_validate(stats).score()
            rows.append(
                ScoreRow(
                    job=f"{model}:{index}",
                    model_kind=kind,
                    model=model,
                    method=model if kind == "merge" else None,
                    setting={"scale": 0.5} if kind == "merge" else {},
                    stage="test",
                    scope="in_domain",
                    evaluation=f"{language}.{task}.test",
                    language=language,
                    task=task,
                    metric=metric,
                    value=value,
                    utterances=N,
                    statistics=stats,
                )
            )
    return rows


def facts(**recipe) -> StudyFacts:
    return StudyFacts(
        name="significance",
        recipe=recipe,
        recipe_path="recipes/x.yaml",
        command="speechmerge study recipes/x.yaml",
        hardware="test",
        executor="local",
        started="2026-12-01T09:00:00+00:00",
        wall_seconds=1.0,
    )


class Tables(HTMLParser):
    """Every table of the page as rows of cell texts, with its caption."""

    def __init__(self):
        super().__init__()
        self.tables, self.paragraphs = [], []
        self._cell, self._caption, self._paragraph = None, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"caption": "", "rows": []})
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "caption":
            self._caption = ""
        elif tag == "p":
            self._paragraph = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1]["rows"][-1].append(self._cell.strip())
            self._cell = None
        elif tag == "caption":
            self.tables[-1]["caption"] = self._caption.strip()
            self._caption = None
        elif tag == "p" and self._paragraph is not None:
            self.paragraphs.append(self._paragraph.strip())
            self._paragraph = None

    def handle_data(self, data):
        for name in ("_cell", "_caption", "_paragraph"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name) + data)


def parsed(paths) -> Tables:
    page = Tables()
    page.feed(paths["html"].read_text(encoding="utf-8"))
    return page


def table(page: Tables, caption_start: str) -> dict[str, dict[str, str]]:
    found = next(t for t in page.tables if t["caption"].startswith(caption_start))
    header, *rows = found["rows"]
    return {row[0]: dict(zip(header, row)) for row in rows}


CELL = re.compile(r"^(\d+\.\d) \[(\d+\.\d), (\d+\.\d)\](?: ([▲▼=]))?$")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return parsed(write_report(facts(), study_rows(), tmp_path_factory.mktemp("sig") / "report"))


def test_main_table_scores_carry_intervals_and_markers_against_the_joint_baseline(report):
    main = table(report, "Test sets")
    expected = {"good": "▲", "bad": "▼", "same": "="}  # WER: good fixes errors, bad makes them
    for name, marker in expected.items():
        match = CELL.match(main[name]["ID WER % ↓"])
        assert match, main[name]["ID WER % ↓"]
        value, low, high, shown = match.groups()
        assert float(low) <= float(value) <= float(high) and shown == marker
    joint = CELL.match(main["baseline: joint"]["ID WER % ↓"])
    assert joint and joint.group(4) is None  # the reference itself is not tested
    assert CELL.match(main["good"]["norm. vs experts % ↑"])


def test_the_family_and_the_top_group_are_stated(report):
    notes = " ".join(p for p in report.paragraphs)
    page_text = notes + " ".join(c for t in report.tables for row in t["rows"] for c in row)
    assert "Holm-adjusted over the family of 6 tests" in page_text  # 3 merges x (ID WER, ID BLEU)
    (line,) = [p for p in report.paragraphs if p.startswith("Top group on norm. vs experts")]
    assert "good" in line and "bad" not in line.split("—")[0]


def test_the_minimum_detectable_difference_of_each_group(report):
    detectable = table(report, "Smallest difference each in-domain test group can detect")
    assert set(detectable) == {"es/transcribe", "de/transcribe", "es/translate"}
    for row in detectable.values():
        assert row["utterances"] == str(N) and float(row["detectable difference (points)"]) > 0


def test_each_expert_is_tested_against_the_base_on_its_own_group(report):
    """Experts err on 10 % of words, the base on 50 %: every expert is significantly better, and
    the difference is the expert's score minus the base's from the per-group table."""
    gains = table(report, "Each expert against the base")
    assert set(gains) == {"es/transcribe", "de/transcribe", "es/translate"}
    wer = table(report, "in-domain WER")
    for group, row in gains.items():
        expert, base = (float(row[c].split()[0]) for c in ("expert", "base"))
        difference = float(row["expert − base"].split()[0])
        assert difference == pytest.approx(expert - base, abs=0.11)
        assert (difference < 0) if group.endswith("transcribe") else (difference > 0)
        assert float(row["p (Holm)"]) < 0.05 and row[""] == "▲"
        if group.endswith("transcribe"):  # the rates drawn: 10 % against 50 % of words
            language = group.split("/")[0]
            assert row["base"] == wer["base (whisper-base)"][language]
            assert row["expert"] == wer["experts (own sets)"][language]
            assert -48 < difference < -32


def test_experts_are_also_tested_against_the_base_on_their_validation_groups(tmp_path):
    """On validation each expert gives exactly the base's outputs (copied statistics): difference
    0, not significant; on test the drawn rates (10 % against 50 %) stay significant."""
    rows = study_rows()
    base = {r.evaluation: r for r in rows if r.model_kind == "base"}
    validation = [
        r.model_copy(
            update={
                "stage": "validation",
                "job": r.job + ":v",
                "evaluation": r.evaluation.replace(".test", ".validation"),
                **(
                    {"value": base[r.evaluation].value, "statistics": base[r.evaluation].statistics}
                    if r.model_kind == "expert"
                    else {}
                ),
            }
        )
        for r in rows
        if r.model_kind in ("base", "expert")
    ]
    page = parsed(write_report(facts(), rows + validation, tmp_path / "report"))
    on_validation = table(page, "Each expert against the base on its own validation group")
    assert set(on_validation) == {"es/transcribe", "de/transcribe", "es/translate"}
    for row in on_validation.values():
        assert row["expert"] == row["base"] and float(row["expert − base"].split()[0]) == 0
        assert row[""] == "="
    on_test = table(page, "Each expert against the base on its own test group")
    assert all(row[""] == "▲" for row in on_test.values())


def test_group_tables_and_ranking_show_intervals(report, tmp_path):
    wer = table(report, "in-domain WER")
    assert all(CELL.match(wer["good"][g]) for g in ("es", "de", "mean"))
    paths = write_report(facts(), study_rows(), tmp_path / "report")
    assert "error bars" in paths["markdown"].read_text(encoding="utf-8")


def test_a_reference_named_in_the_recipe(tmp_path):
    from speechmerge.errors import SpeechmergeError

    page = parsed(write_report(facts(reference="good"), study_rows(same_as_joint=False), tmp_path / "a"))
    main = table(page, "Test sets")
    assert CELL.match(main["bad"]["ID WER % ↓"]).group(4) == "▼"
    assert CELL.match(main["good"]["ID WER % ↓"]).group(4) is None
    with pytest.raises(SpeechmergeError, match="recipe reference: 'nobody'"):
        write_report(facts(reference="nobody"), study_rows(), tmp_path / "b")


# --- select: significant ------------------------------------------------------------------------


def _validation_statistics(rate: float, seed: int, n: int = 40) -> dict:
    rng = np.random.default_rng(seed)
    ops = ["".join("S" if e else "C" for e in rng.random(10) < rate) for _ in range(n)]
    stats = [[o.count("S"), 0, 0, 10] for o in ops]
    return {"metric": "wer", "ids": [f"v{i}" for i in range(n)], "speakers": [None] * n, "stats": stats, "ops": ops}


def test_select_significant_keeps_the_default_unless_another_setting_is_significantly_better():
    from speechmerge.study.significance import keep_default_unless_better

    group = ("es", "transcribe", "-", "wer")
    experts = {group: _validation_statistics(0.1, 1)}
    at_default = _validation_statistics(0.30, 2)
    # slightly better: the default's outputs with one error fewer on one utterance
    slightly = {**at_default, "stats": [row[:] for row in at_default["stats"]]}
    first_wrong = next(i for i, row in enumerate(slightly["stats"]) if row[0] > 0)
    slightly["stats"][first_wrong][0] -= 1
    statistics = {
        "default": {group: at_default},
        "slightly": {group: slightly},
        "much": {group: _validation_statistics(0.05, 4)},
    }
    default = ("default", {"scale": 1.0})

    def best(job):
        return {"job": job, "setting": {"scale": 0.5}, "score": 1.0, "criterion": "mean vs_expert on validation"}

    kept = keep_default_unless_better(best("slightly"), default, statistics, experts, {}, "vs_expert")
    assert kept["job"] == "default" and kept["setting"] == {"scale": 1.0}
    assert kept["criterion"].startswith("select: significant: the default setting kept")
    taken = keep_default_unless_better(best("much"), default, statistics, experts, {}, "vs_expert")
    assert taken["job"] == "much" and "better than the default setting, p = " in taken["criterion"]
    unsearched = keep_default_unless_better(best("much"), None, statistics, experts, {}, "vs_expert")
    assert unsearched["job"] == "much" and "default setting was not searched" in unsearched["criterion"]


def test_the_recipe_names_a_reference_and_the_selection_rule(tmp_path):
    from study_helpers import study_recipe, write_recipe

    from speechmerge.study.recipe import load_study

    recipe = study_recipe(tmp_path, tmp_path / "base", reference="ties")
    recipe["evaluation"] = {**recipe.get("evaluation", {}), "select": "significant"}
    loaded = load_study(write_recipe(tmp_path / "s.yaml", recipe))
    assert loaded.reference == "ties" and loaded.evaluation.select == "significant"
    recipe["evaluation"]["select"] = "sometimes"
    with pytest.raises(Exception, match="select"):
        load_study(write_recipe(tmp_path / "t.yaml", recipe))


def test_the_report_says_which_rule_chose(tmp_path):
    facts_with_rules = facts().model_copy(update={"selection_rules": {"good": "select: significant: kept"}})
    rows = study_rows()
    validation = [r.model_copy(update={"stage": "validation", "job": r.job + ":v"}) for r in rows]
    paths = write_report(facts_with_rules, rows + validation, tmp_path / "report")
    assert "Chosen by: good: select: significant: kept." in paths["markdown"].read_text(encoding="utf-8")


def test_latex_tables_carry_the_markers_as_symbols(tmp_path):
    paths = write_report(facts(), study_rows(), tmp_path / "report")
    latex = paths["latex"].read_text(encoding="utf-8")
    assert r"$\blacktriangle$" in latex and r"$\blacktriangledown$" in latex
    assert "▲" not in latex and "▼" not in latex


def test_without_experts_the_top_group_is_judged_on_the_first_in_domain_column(tmp_path):
    rows = [r for r in study_rows() if r.model_kind != "expert"]
    page = parsed(write_report(facts(), rows, tmp_path / "report"))
    (line,) = [p for p in page.paragraphs if p.startswith("Top group on")]
    assert line.startswith("Top group on ID WER % ↓: good —")


def test_the_ranking_plot_draws_error_bars():
    from PIL import Image

    from speechmerge.study.plots import ranking_bars

    def dark_pixels(png: bytes) -> int:
        return int((np.asarray(Image.open(io.BytesIO(png)).convert("L")) < 60).sum())

    names, values, references = ["a", "b"], [90.0, 100.0], [False, True]
    plain = ranking_bars(names, values, references, "x")
    with_bars = ranking_bars(names, values, references, "x", [(80.0, 95.0), None])
    # the error bar is drawn in near-black: more dark pixels than the same bars without it
    assert dark_pixels(with_bars) > dark_pixels(plain)


# --- claims: ------------------------------------------------------------------------------------

CLAIMS = [
    {"text": "good beats joint", "better": "good", "than": "joint", "column": "ID WER"},
    {"text": "bad beats joint", "better": "bad", "than": "joint", "column": "ID WER"},
    {"text": "same beats joint", "better": "same", "than": "joint", "column": "ID WER"},
    {"text": "good beats joint by 60 points", "better": "good", "than": "joint", "column": "ID WER", "margin": 60},
    {"text": "the best of bad and good beats joint", "better": ["bad", "good"], "than": "joint", "column": "ID WER"},
    {"text": "good keeps the experts' BLEU", "better": "good", "than": "experts", "column": "ID BLEU"},
    {"text": "on a column this study lacks", "better": "good", "than": "joint", "column": "OOD WER"},
]


@pytest.fixture(scope="module")
def claims(tmp_path_factory):
    page = parsed(write_report(facts(claims=CLAIMS), study_rows(), tmp_path_factory.mktemp("claims") / "report"))
    found = next(t for t in page.tables if t["caption"].startswith("Paper claims"))
    header, *rows = found["rows"]
    return {row[0]: dict(zip(header, row)) for row in rows}, table(page, "Test sets")


def test_each_claim_gets_the_verdict_its_data_implies(claims):
    """good errs on 5 % of words, joint on 30 %, bad on 60 %; same is joint's outputs."""
    rows, _ = claims
    assert rows["good beats joint"]["verdict"] == "supported"
    assert rows["bad beats joint"]["verdict"] == "contradicted"
    assert rows["same beats joint"]["verdict"] == "not decided"
    assert rows["same beats joint"]["A − B (better > 0)"].startswith("+0.0 [0.0, 0.0]")
    assert rows["good beats joint by 60 points"]["verdict"] == "better, margin not shown"
    assert rows["the best of bad and good beats joint"]["A"] == "good"
    assert rows["on a column this study lacks"]["verdict"] == ""
    assert "OOD WER is not in this study's main table" in rows["on a column this study lacks"]["p (Holm)"]


def test_a_claims_effect_is_the_difference_of_the_main_tables_scores_and_its_p_is_holm_adjusted(claims):
    from speechmerge.study.significance import Resampler

    rows, main = claims
    good, joint = (float(main[name]["ID WER % ↓"].split()[0]) for name in ("good", "baseline: joint"))
    effect = float(rows["good beats joint"]["A − B (better > 0)"].split()[0])
    assert effect == pytest.approx(joint - good, abs=0.11) and effect > 20  # positive: good has fewer errors
    # the three claims with every resample on one side share the bootstrap's smallest p, 2 / (R + 1);
    # Holm over the 6 decided claims multiplies the smallest by 6, and ties keep that value
    floor = 2 / (Resampler().resamples + 1)
    for text in ("good beats joint", "bad beats joint", "the best of bad and good beats joint"):
        assert float(rows[text]["p (Holm)"]) == pytest.approx(min(1.0, 6 * floor), rel=1e-2)


def test_a_claim_naming_an_unknown_model_or_column_is_refused_in_one_line():
    from speechmerge.errors import SpeechmergeError
    from speechmerge.study.claims import ClaimSpec, check_claims

    def check(**claim):
        spec = ClaimSpec(**{"text": "t", "better": "tsv_m", "than": "joint", "column": "ID WER", **claim})
        check_claims([spec], ["tsv_m", "ties"], ["joint"], "r.yaml")

    check()
    check(better=["tsv_m", "ties"], than="experts", column="norm. vs joint", margin=20)
    for claim, message in (
        (
            {"better": "lors"},
            r"r.yaml: claims\[0\] \('t'\): 'lors' is not a model of this study; name one of tsv_m, ties, joint, base, experts",
        ),
        ({"than": ["ties", "tsv_m"]}, "tsv_m on both sides"),
        ({"column": "ID WERR"}, "column 'ID WERR' is not a main-table column; name one of ID WER, "),
        ({"column": "norm. vs sequential"}, "column 'norm. vs sequential' is not a main-table column"),
    ):
        with pytest.raises(SpeechmergeError, match=message) as excinfo:
            check(**claim)
        assert "\n" not in str(excinfo.value)


def test_report_only_adopts_the_recipes_claims_and_reference_and_refuses_a_bad_claim(tmp_path):
    """`study --report-only` with an edited recipe: its claims and reference (which change no job)
    replace the stored run's; the rest of the stored recipe stays; a bad claim changes nothing."""
    from study_helpers import study_recipe

    from speechmerge.errors import SpeechmergeError
    from speechmerge.study.recipe import parse_study
    from speechmerge.study.runner import adopt_report_keys
    from speechmerge.study.store import Store

    store = Store(tmp_path / "study.sqlite")
    stored = {"name": "old", "methods": {"ties": {}}, "claims": [], "reference": None}
    store.set_meta(recipe=stored)
    recipe = study_recipe(tmp_path, tmp_path / "base", reference="ties")
    recipe["claims"] = [{"text": "ties beats soup", "better": "ties", "than": "soup", "column": "ID WER"}]
    adopt_report_keys(parse_study(recipe, "r.yaml"), store)
    adopted = store.meta()["recipe"]
    assert adopted["reference"] == "ties" and adopted["claims"][0]["better"] == ["ties"]
    assert adopted["name"] == "old" and adopted["methods"] == {"ties": {}}
    recipe["claims"] = [{"text": "x", "better": "lors", "than": "soup", "column": "ID WER"}]
    with pytest.raises(SpeechmergeError, match="'lors' is not a model of this study"):
        adopt_report_keys(parse_study(recipe, "r.yaml"), store)
    assert store.meta()["recipe"] == adopted
