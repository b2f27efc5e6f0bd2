import sys
import textwrap
from pathlib import Path

import pytest

from batchgen.errors import ManifestError
from batchgen.job import JOB_DEFAULTS, JOB_FIELDS, Job
from batchgen.manifest.parse import (
    PROFILES,
    TOP_LEVEL_KEYS,
    Entry,
    Manifest,
    count_tokens_warning,
    load_manifest,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems(path, **kw) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, **kw)
    return info.value.problems


def one_problem(path, **kw) -> str:
    found = problems(path, **kw)
    assert len(found) == 1, found
    return found[0]


def expect_problem(path, *needles, **kw) -> str:
    """The one problem mentioning every needle."""
    found = problems(path, **kw)
    matching = [p for p in found if all(n in p for n in needles)]
    assert matching, f"no problem contains {needles}: {found}"
    return matching[0]


# ---------------------------------------------------------------- YAML, happy paths


def test_yaml_full(tmp_path):
    write(tmp_path, "prompts.txt", "  first prompt  \n\nsecond prompt\n   \n")
    path = write(
        tmp_path,
        "jobs.yaml",
        """
        model: genmo/mochi-1-preview
        revision: main
        profile: offload
        quality: true
        out: renders
        output_name: "{prompt}-{index}"
        defaults:
          num_frames: 25
          negative_prompt: blurry
        seeds: [7, 8]
        jobs:
          - a cat
          - prompt: a dog
            seed: 3
            height: 240
            width: 320
            guidance_scale: 6
        prompts_file: prompts.txt
        """,
    )
    m = load_manifest(path)
    assert isinstance(m, Manifest)
    assert m.model == "genmo/mochi-1-preview"
    assert m.revision == "main"
    assert m.profile == "offload"
    assert m.quality is True
    assert m.out == tmp_path / "renders"
    assert m.output_name == "{prompt}-{index}"
    assert m.warnings == []
    summary = [(e.fields["prompt"], e.fields["seed"], e.index) for e in m.entries]
    assert summary == [
        ("a cat", 7, 0),
        ("a cat", 8, 1),
        ("a dog", 3, 0),
        ("first prompt", 7, 0),
        ("first prompt", 8, 1),
        ("second prompt", 7, 0),
        ("second prompt", 8, 1),
    ]
    for e in m.entries:
        assert isinstance(e, Entry)
        assert set(e.fields) == set(JOB_FIELDS)
        assert e.fields["num_frames"] == 25
        assert e.fields["negative_prompt"] == "blurry"
    dog = m.entries[2].fields
    assert (dog["height"], dog["width"]) == (240, 320)
    assert dog["guidance_scale"] == 6.0 and isinstance(dog["guidance_scale"], float)
    # sources: YAML line of the entry, TXT "line N"
    assert m.entries[0].source == f"{path}:12"
    assert m.entries[2].source == f"{path}:13"
    assert m.entries[3].source == f"{tmp_path / 'prompts.txt'}:line 1"
    assert m.entries[5].source == f"{tmp_path / 'prompts.txt'}:line 3"

    jobs = m.expand("bf16")
    assert all(isinstance(j, Job) for j in jobs)
    assert len(jobs) == 7
    assert jobs[0].model == "genmo/mochi-1-preview" and jobs[0].revision == "main"
    assert jobs[0].precision == "bf16"
    assert [j.output_name for j in jobs[:3]] == ["a cat-0", "a cat-1", "a dog-0"]
    assert jobs[1].source == f"{path}:12" and jobs[1].index == 1


def test_yaml_defaults_applied(tmp_path):
    path = write(tmp_path, "j.yml", "jobs:\n  - hello\n")
    m = load_manifest(path)
    assert m.model == "tiny" and m.profile == "auto" and m.quality is False and m.out is None
    assert m.revision is None and m.output_name == "{job_id}"
    fields = m.entries[0].fields
    expected = dict(JOB_DEFAULTS, prompt="hello")
    assert fields == expected
    job = m.expand("fp32")[0]
    assert job.output_name == job.job_id


def test_prompt_whitespace_stripped(tmp_path):
    path = write(tmp_path, "j.yaml", 'jobs:\n  - "  spaced prompt  "\n')
    assert load_manifest(path).entries[0].fields["prompt"] == "spaced prompt"


def test_yaml_integral_float_accepted(tmp_path):
    path = write(tmp_path, "j.yaml", "jobs:\n  - {prompt: x, num_frames: 25.0}\n")
    assert load_manifest(path).entries[0].fields["num_frames"] == 25


def test_yaml_entry_own_seed_not_expanded(tmp_path):
    path = write(tmp_path, "j.yaml", "seeds: [1, 2, 3]\njobs:\n  - {prompt: x, seed: 9}\n  - y\n")
    m = load_manifest(path)
    assert [(e.fields["prompt"], e.fields["seed"], e.index) for e in m.entries] == [
        ("x", 9, 0),
        ("y", 1, 0),
        ("y", 2, 1),
        ("y", 3, 2),
    ]


def test_seeds_index_in_output_name(tmp_path):
    path = write(tmp_path, "j.yaml", 'output_name: "{prompt}-{index:02d}-s{seed}"\nseeds: [100, 200]\njobs: [a cat]\n')
    names = [j.output_name for j in load_manifest(path).expand("fp32")]
    assert names == ["a cat-00-s100", "a cat-01-s200"]


def test_yaml_anchor_merge(tmp_path):
    path = write(
        tmp_path,
        "j.yaml",
        """
        base: &base
          num_frames: 13
        """,
    )
    # unknown top-level 'base' is refused, but merge keys inside jobs work
    assert "unknown top-level field 'base'" in one_problem(path)
    path = write(
        tmp_path,
        "k.yaml",
        """
        defaults: &d
          num_frames: 13
        jobs:
          - <<: *d
            prompt: merged
        """,
    )
    assert load_manifest(path).entries[0].fields["num_frames"] == 13


# ---------------------------------------------------------------- overrides


def test_cli_overrides(tmp_path):
    path = write(tmp_path, "j.yaml", "model: genmo/mochi-1-preview\nout: here\nprofile: cpu\njobs: [x]\n")
    m = load_manifest(path, model="tiny", out="elsewhere", profile="nf4")
    assert m.model == "tiny"
    assert m.out == Path("elsewhere")
    assert m.profile == "nf4"
    assert m.expand("fp32")[0].model == "tiny"


def test_cli_overrides_for_csv_and_txt(tmp_path):
    csv_path = write(tmp_path, "j.csv", "prompt\nx\n")
    txt_path = write(tmp_path, "j.txt", "x\n")
    for path in (csv_path, txt_path):
        m = load_manifest(path, model="some/model", out=tmp_path / "o")
        assert m.model == "some/model" and m.out == tmp_path / "o"
        assert load_manifest(path).model == "tiny"


def test_override_replaces_invalid_manifest_value(tmp_path):
    path = write(tmp_path, "j.yaml", "profile: turbo\njobs: [x]\n")
    assert load_manifest(path, profile="cpu").profile == "cpu"


def test_bad_profile_override(tmp_path):
    path = write(tmp_path, "j.yaml", "jobs: [x]\n")
    msg = one_problem(path, profile="offlaod")
    assert "--profile" in msg and "'offload'" in msg


def test_out_relative_to_manifest_folder(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    path = write(sub, "j.yaml", "out: ../renders\njobs: [x]\n")
    assert load_manifest(path).out == sub / "../renders"


# ---------------------------------------------------------------- CSV and TXT


def test_csv(tmp_path):
    path = write(
        tmp_path,
        "jobs.csv",
        """
        prompt,seed,num_frames,guidance_scale,negative_prompt
        a cat,1,25,5,
        "a dog, running",,,,ugly

        " spaced ",12,7,1,
        """,
    )
    m = load_manifest(path)
    rows = [e.fields for e in m.entries]
    assert rows[0]["prompt"] == "a cat" and rows[0]["seed"] == 1 and rows[0]["num_frames"] == 25
    assert rows[0]["guidance_scale"] == 5.0
    assert rows[0]["negative_prompt"] == ""
    assert rows[1]["prompt"] == "a dog, running"
    assert rows[1]["seed"] == 0 and rows[1]["num_frames"] == 19 and rows[1]["negative_prompt"] == "ugly"
    assert [e.source for e in m.entries] == [f"{path}:row 2", f"{path}:row 3", f"{path}:row 5"]
    assert all(e.index == 0 for e in m.entries)


def test_csv_textual_numbers_converted(tmp_path):
    path = write(tmp_path, "j.csv", "prompt,seed,fps\nx, 12 ,24\n")
    fields = load_manifest(path).entries[0].fields
    assert fields["seed"] == 12 and fields["fps"] == 24


def test_csv_float_seed_refused(tmp_path):
    path = write(tmp_path, "j.csv", "prompt,seed\nx,12.5\n")
    msg = one_problem(path)
    assert "j.csv:row 2" in msg and "'seed'" in msg and "whole number" in msg


def test_csv_bom_accepted(tmp_path):
    path = tmp_path / "j.csv"
    path.write_bytes(b"\xef\xbb\xbfprompt,seed\nx,3\n")
    assert load_manifest(path).entries[0].fields["seed"] == 3


def test_csv_unknown_column(tmp_path):
    path = write(tmp_path, "j.csv", "prompt,num_frame,steps\nx,25,3\n")
    found = problems(path)
    assert any("j.csv:row 1" in p and "'num_frame'" in p and "did you mean 'num_frames'" in p for p in found)
    assert any("'steps'" in p for p in found)


def test_csv_model_column_refused(tmp_path):
    path = write(tmp_path, "j.csv", "prompt,model\nx,tiny\n")
    msg = one_problem(path)
    assert "j.csv:row 1" in msg and "'model'" in msg and "command-line" in msg


def test_csv_missing_prompt_column(tmp_path):
    path = write(tmp_path, "j.csv", "seed\n1\n")
    assert "no 'prompt' column" in one_problem(path)


def test_csv_too_many_cells(tmp_path):
    path = write(tmp_path, "j.csv", "prompt,seed\na, b, c,1\n")
    msg = one_problem(path)
    assert "j.csv:row 2" in msg and "quote" in msg


def test_csv_validation_errors_name_row_and_field(tmp_path):
    path = write(tmp_path, "j.csv", "prompt,num_frames,height\nok,19,480\nx,24,500\n")
    found = problems(path)
    assert len(found) == 2
    assert any("j.csv:row 3" in p and "'num_frames'" in p and "use 19 or 25" in p for p in found)
    assert any("j.csv:row 3" in p and "'height'" in p and "use 496 or 512" in p for p in found)


def test_csv_empty_prompt_cell(tmp_path):
    path = write(tmp_path, "j.csv", "prompt,seed\n,4\n")
    msg = one_problem(path)
    assert "j.csv:row 2" in msg and "'prompt'" in msg


def test_txt(tmp_path):
    path = write(tmp_path, "p.txt", "  one  \n\n\ttwo\r\n   \nthree")
    m = load_manifest(path)
    assert [e.fields["prompt"] for e in m.entries] == ["one", "two", "three"]
    assert [e.source for e in m.entries] == [f"{path}:line 1", f"{path}:line 3", f"{path}:line 5"]
    assert all(e.fields["seed"] == 0 and e.fields["num_frames"] == 19 for e in m.entries)


def test_txt_control_character(tmp_path):
    path = write(tmp_path, "p.txt", "fine\nbad\x1b[31mred\n")
    msg = one_problem(path)
    assert "p.txt:line 2" in msg and "'prompt'" in msg and "U+001B" in msg and "control" in msg


def test_unsupported_extension(tmp_path):
    path = write(tmp_path, "jobs.json", "{}")
    msg = one_problem(path)
    assert "jobs.json" in msg and ".yaml" in msg and ".csv" in msg and ".txt" in msg


def test_empty_manifests(tmp_path):
    for name, text in [("a.txt", "\n  \n"), ("b.csv", "prompt\n"), ("c.yaml", "jobs: []\n"), ("d.yaml", "model: tiny\n")]:
        msg = one_problem(write(tmp_path, name, text))
        assert name in msg and "no entries" in msg
    msg = one_problem(write(tmp_path, "e.yaml", ""))
    assert "e.yaml:1" in msg and "empty" in msg


# ---------------------------------------------------------------- files


def test_missing_manifest(tmp_path):
    msg = one_problem(tmp_path / "nope.yaml")
    assert "nope.yaml" in msg and "not found" in msg and str(tmp_path) in msg


def test_missing_prompts_file(tmp_path):
    path = write(tmp_path, "j.yaml", "model: tiny\nprompts_file: lists/prompts.txt\n")
    msg = one_problem(path)
    assert "j.yaml:2" in msg and "prompts_file" in msg and "not found" in msg
    assert str(tmp_path / "lists" / "prompts.txt") in msg


def test_empty_prompts_file(tmp_path):
    write(tmp_path, "p.txt", "\n\n")
    path = write(tmp_path, "j.yaml", "jobs: [x]\nprompts_file: p.txt\n")
    msg = one_problem(path)
    assert "j.yaml:2" in msg and "no prompts" in msg


def test_non_utf8_manifest(tmp_path):
    path = tmp_path / "j.yaml"
    path.write_bytes(b"jobs:\n  - caf\xe9\n")
    msg = one_problem(path)
    assert "j.yaml:2" in msg and "UTF-8" in msg and "offset 13" in msg


def test_non_utf8_prompts_file(tmp_path):
    (tmp_path / "p.txt").write_bytes(b"ok\n\xff\xfe\n")
    path = write(tmp_path, "j.yaml", "prompts_file: p.txt\n")
    msg = one_problem(path)
    assert "p.txt" in msg and "UTF-8" in msg and "offset 3" in msg


def test_non_utf8_csv(tmp_path):
    path = tmp_path / "j.csv"
    path.write_bytes("prompt\nna\u00efve\n".encode("latin-1"))
    msg = one_problem(path)
    assert "j.csv" in msg and "UTF-8" in msg and "offset 9" in msg


def test_manifest_is_a_folder(tmp_path):
    (tmp_path / "d.yaml").mkdir()
    assert "folder" in one_problem(tmp_path / "d.yaml")


# ---------------------------------------------------------------- YAML structure errors


def test_yaml_syntax_error_line(tmp_path):
    path = write(
        tmp_path,
        "j.yaml",
        """
        model: tiny
        jobs:
          - prompt: fine
          - prompt: [unclosed
            seed: 1
        """,
    )
    msg = one_problem(path)
    assert "YAML syntax error" in msg and "column" in msg
    assert "j.yaml:5" in msg or "j.yaml:4" in msg
    assert "Traceback" not in msg


def test_yaml_syntax_error_tab(tmp_path):
    path = write(tmp_path, "j.yaml", "jobs:\n\t- x\n")
    msg = one_problem(path)
    assert "j.yaml:2" in msg and "YAML syntax error" in msg and "tabs" in msg


def test_yaml_control_character(tmp_path):
    path = write(tmp_path, "j.yaml", "jobs:\n  - bad\x07bell\n")
    msg = one_problem(path)
    assert "j.yaml:2" in msg and "U+0007" in msg


def test_yaml_escaped_control_character_in_prompt(tmp_path):
    path = write(tmp_path, "j.yaml", 'jobs:\n  - "bad\\x07bell"\n')
    msg = one_problem(path)
    assert "j.yaml:2" in msg and "'prompt'" in msg and "U+0007" in msg


def test_yaml_multiple_documents(tmp_path):
    path = write(tmp_path, "j.yaml", "jobs: [a]\n---\njobs: [b]\n")
    assert "j.yaml:" in one_problem(path)


def test_top_level_not_mapping(tmp_path):
    msg = one_problem(write(tmp_path, "j.yaml", "- a cat\n- a dog\n"))
    assert "j.yaml:1" in msg and "mapping" in msg and "jobs:" in msg
    msg = one_problem(write(tmp_path, "k.yaml", "just a string\n"))
    assert "k.yaml:1" in msg and "mapping" in msg


def test_jobs_not_list(tmp_path):
    msg = one_problem(write(tmp_path, "j.yaml", "model: tiny\njobs:\n  prompt: x\n"))
    assert "j.yaml:2" in msg and "'jobs'" in msg and "list" in msg


def test_job_item_wrong_type(tmp_path):
    msg = one_problem(write(tmp_path, "j.yaml", "jobs:\n  - a\n  - 42\n"))
    assert "j.yaml:3" in msg and "item 2" in msg


def test_defaults_not_mapping(tmp_path):
    msg = expect_problem(write(tmp_path, "j.yaml", "defaults: [1, 2]\njobs: [x]\n"), "'defaults'")
    assert "j.yaml:1" in msg and "mapping" in msg


@pytest.mark.parametrize(
    "seeds, needle",
    [
        ("5", "list"),
        ("[]", "empty"),
        ("[1, -1]", "out of range"),
        ("[1, true]", "boolean"),
        ("[1, 1.5]", "whole number"),
        ('[1, "2"]', "remove the quotes"),
        (f"[{2**64}]", "out of range"),
    ],
)
def test_bad_seeds(tmp_path, seeds, needle):
    path = write(tmp_path, "j.yaml", f"jobs: [x]\nseeds: {seeds}\n")
    msg = expect_problem(path, "'seeds'")
    assert "j.yaml:2" in msg and needle in msg


def test_seed_in_defaults_and_seeds_list(tmp_path):
    path = write(tmp_path, "j.yaml", "defaults:\n  seed: 3\nseeds: [1]\njobs: [x]\n")
    msg = one_problem(path)
    assert "j.yaml:2" in msg and "'seed'" in msg and "seeds" in msg


def test_unknown_keys_everywhere(tmp_path):
    path = write(
        tmp_path,
        "j.yaml",
        """
        modle: tiny
        num_frames: 25
        defaults:
          guidance: 3
        jobs:
          - prompt: x
            negative: blurry
          - prompt: y
            model: other
        """,
    )
    found = problems(path)
    assert len(found) == 5, found

    def has(*needles):
        assert any(all(n in p for n in needles) for p in found), (needles, found)

    has("j.yaml:1", "'modle'", "did you mean 'model'")
    has("j.yaml:2", "'num_frames'", "defaults:")
    has("j.yaml:4", "'guidance'", "defaults", "did you mean 'guidance_scale'")
    has("j.yaml:7", "'negative'", "did you mean 'negative_prompt'")
    has("j.yaml:9", "'model'", "top level")


def test_duplicate_yaml_keys(tmp_path):
    path = write(tmp_path, "j.yaml", "jobs:\n  - prompt: a\n    seed: 1\n    seed: 2\n")
    msg = one_problem(path)
    assert "j.yaml:4" in msg and "'seed'" in msg and "twice" in msg


def test_job_without_prompt(tmp_path):
    msg = one_problem(write(tmp_path, "j.yaml", "jobs:\n  - seed: 3\n"))
    assert "j.yaml:2" in msg and "'prompt'" in msg


def test_shared_prompt_in_defaults(tmp_path):
    m = load_manifest(write(tmp_path, "j.yaml", "defaults:\n  prompt: shared\nseeds: [1, 2]\njobs:\n  - {num_frames: 7}\n"))
    assert [(e.fields["prompt"], e.fields["seed"]) for e in m.entries] == [("shared", 1), ("shared", 2)]


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("model", "5", "'model'"),
        ("revision", "1234567", "quotes"),
        ("profile", "ofload", "did you mean 'offload'"),
        ("profile", "turbo", "group-offload"),
        ("quality", "yes please", "true or false"),
        ("out", "[a]", "'out'"),
        ("output_name", '"{promt}-{index}"', "did you mean '{prompt}'"),
        ("output_name", '"{prompt"', "not a valid template"),
        ("output_name", '""', "'output_name'"),
        ("prompts_file", "3", "'prompts_file'"),
    ],
)
def test_bad_top_level_values(tmp_path, key, value, needle):
    path = write(tmp_path, "j.yaml", f"jobs: [x]\n{key}: {value}\n")
    msg = one_problem(path)
    assert "j.yaml:2" in msg and key in msg and needle in msg


def test_profiles_constant():
    assert set(PROFILES) == {"auto", "resident", "fast", "fp8-fast", "fp8-attn", "offload", "group-offload", "fp8", "int8", "nf4", "cpu"}
    assert "jobs" in TOP_LEVEL_KEYS and "defaults" in TOP_LEVEL_KEYS and "approximate" in TOP_LEVEL_KEYS


# ---------------------------------------------------------------- field validation


@pytest.mark.parametrize(
    "field, value, hints",
    [
        ("num_frames", "24", ["num_frames 24 is not 6k+1", "use 19 or 25"]),
        ("num_frames", "26", ["use 25 or 31"]),
        ("num_frames", "1", ["use 7"]),
        ("num_frames", "6", ["use 7"]),
        ("num_frames", "0", ["use 7"]),
        ("num_frames", "-5", ["use 7"]),
        ("num_frames", "19.5", ["not a whole number"]),
        ("num_frames", '"25"', ["remove the quotes"]),
        ("num_frames", "abc", ["not a whole number"]),
        ("height", "500", ["multiple of 16", "use 496 or 512"]),
        ("height", "8", ["multiple of 16", "use 16"]),
        ("height", "0", ["positive multiple of 16"]),
        ("width", "-16", ["positive multiple of 16"]),
        ("width", "850", ["use 848 or 864"]),
        ("width", "true", ["boolean"]),
        ("num_inference_steps", "1", ["at least 2"]),
        ("num_inference_steps", "0", ["at least 2"]),
        ("guidance_scale", "0.5", [">= 1", "1 turns classifier-free guidance off"]),
        ("guidance_scale", ".nan", ["finite"]),
        ("guidance_scale", ".inf", ["finite"]),
        ("guidance_scale", "false", ["boolean"]),
        ("guidance_scale", "high", ["not a number"]),
        ("seed", "-1", ["out of range", "2**64"]),
        ("seed", str(2**64), ["out of range"]),
        ("seed", "true", ["boolean"]),
        ("seed", "1.5", ["not a whole number"]),
        ('seed', '"12"', ["remove the quotes"]),
        ("fps", "0", ["1 to 240"]),
        ("fps", "241", ["1 to 240"]),
        ("fps", "29.97", ["not a whole number"]),
        ("prompt", '"   "', ["prompt is empty"]),
        ("prompt", "42", ["must be text", "quotes"]),
        ("prompt", "[1, 2]", ["must be text", "quotes"]),
        ("prompt", "[a, b]", ["must be text"]),
        ("negative_prompt", "12", ["must be text"]),
    ],
)
def test_field_validation_yaml(tmp_path, field, value, hints):
    path = write(tmp_path, "jobs.yaml", f"model: tiny\njobs:\n  - prompt: ok\n  - prompt: x\n    {field}: {value}\n")
    if field == "prompt":
        path = write(tmp_path, "jobs.yaml", f"model: tiny\njobs:\n  - prompt: ok\n  - prompt: {value}\n")
    msg = one_problem(path)
    line = "jobs.yaml:4" if field == "prompt" else "jobs.yaml:5"
    assert line in msg, msg
    assert f"field '{field}'" in msg, msg
    for hint in hints:
        assert hint in msg, msg


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_frames", 7),
        ("num_frames", 163),
        ("height", 16),
        ("width", 1280),
        ("num_inference_steps", 2),
        ("guidance_scale", 1),
        ("seed", 0),
        ("seed", 2**64 - 1),
        ("fps", 1),
        ("fps", 240),
        ("negative_prompt", '""'),
    ],
)
def test_field_limits_accepted(tmp_path, field, value):
    path = write(tmp_path, "j.yaml", f"jobs:\n  - prompt: x\n    {field}: {value}\n")
    fields = load_manifest(path).entries[0].fields
    if field == "negative_prompt":
        assert fields[field] == ""
    else:
        assert fields[field] == value
        assert type(fields[field]) is type(JOB_DEFAULTS[field])


def test_every_problem_reported(tmp_path):
    path = write(
        tmp_path,
        "j.yaml",
        """
        jobs:
          - {prompt: a, num_frames: 24}
          - {prompt: b, height: 500, width: 850}
          - {prompt: c, seed: -3}
        """,
    )
    assert len(problems(path)) == 4


def test_defaults_validated_once_with_their_line(tmp_path):
    path = write(tmp_path, "j.yaml", "defaults:\n  num_frames: 24\njobs: [a, b, c]\n")
    msg = one_problem(path)
    assert "j.yaml:2" in msg and "'num_frames'" in msg and "use 19 or 25" in msg


def test_null_field_means_default(tmp_path):
    path = write(tmp_path, "j.yaml", "jobs:\n  - prompt: x\n    num_frames:\n")
    assert load_manifest(path).entries[0].fields["num_frames"] == 19


# ---------------------------------------------------------------- long prompts


def test_long_prompt_warning_words(tmp_path):
    long = " ".join(["word"] * 300)
    path = write(tmp_path, "j.yaml", f"jobs:\n  - short\n  - {long}\n")
    m = load_manifest(path)
    assert len(m.warnings) == 1
    assert "j.yaml:3" in m.warnings[0] and "256" in m.warnings[0] and "estimate" in m.warnings[0]


def test_long_prompt_warning_chars(tmp_path):
    path = write(tmp_path, "p.txt", "x" * 1001 + "\n" + "y" * 1000 + "\n")
    m = load_manifest(path)
    assert len(m.warnings) == 1 and "p.txt:line 1" in m.warnings[0]


def test_long_prompt_warned_once_with_seeds(tmp_path):
    path = write(tmp_path, "j.yaml", "seeds: [1, 2, 3]\njobs:\n  - " + "z" * 2000 + "\n")
    assert len(load_manifest(path).warnings) == 1


def test_long_default_negative_prompt_warned_once(tmp_path):
    path = write(tmp_path, "j.yaml", "defaults:\n  negative_prompt: " + "n " * 600 + "\njobs: [a, b]\n")
    warnings = load_manifest(path).warnings
    assert len(warnings) == 1 and "negative_prompt" in warnings[0] and "j.yaml:2" in warnings[0]


def test_count_tokens_warning():
    assert count_tokens_warning("a " * 256, source="s") is None
    assert "s:" in count_tokens_warning("a " * 257, source="s")
    assert count_tokens_warning("x" * 1000, source="s") is None
    assert count_tokens_warning("x" * 1001, source="s") is not None


# ---------------------------------------------------------------- expand: dedup and collisions


def test_dedup_identical_entries(tmp_path):
    write(tmp_path, "p.txt", "a cat\n")
    path = write(tmp_path, "j.yaml", "jobs:\n  - a cat\n  - a dog\n  - prompt: a cat\n    seed: 0\nprompts_file: p.txt\n")
    m = load_manifest(path)
    assert len(m.entries) == 4
    jobs = m.expand("fp32")
    assert [j.prompt for j in jobs] == ["a cat", "a dog"]
    assert jobs[0].source == f"{path}:2"  # the first is kept
    assert len(m.duplicates) == 2
    assert m.duplicates[0] == (f"{path}:4", f"{path}:2")


def test_dedup_duplicate_seeds(tmp_path):
    path = write(tmp_path, "j.yaml", "seeds: [5, 5]\njobs: [a]\n")
    assert len(load_manifest(path).expand("fp32")) == 1


def test_output_name_collision(tmp_path):
    path = write(tmp_path, "j.yaml", 'output_name: "{prompt}"\njobs:\n  - a cat\n  - prompt: a cat\n    seed: 4\n')
    m = load_manifest(path)
    with pytest.raises(ManifestError) as info:
        m.expand("fp32")
    msg = info.value.problems[0]
    assert len(info.value.problems) == 1
    assert "j.yaml:1" in msg and "output_name" in msg
    assert f"{path}:3" in msg and f"{path}:4" in msg and "'a cat'" in msg
    assert "{job_id}" in msg


def test_output_name_collision_case_insensitive(tmp_path):
    path = write(tmp_path, "j.csv", "prompt\nA Cat\na cat\n")
    m = load_manifest(path)
    m.output_name = "{prompt}"
    with pytest.raises(ManifestError) as info:
        m.expand("fp32")
    msg = info.value.problems[0]
    assert "row 2" in msg and "row 3" in msg and "ignoring case" in msg


def test_output_name_collision_after_sanitising(tmp_path):
    path = write(tmp_path, "j.yaml", 'output_name: "{prompt}"\njobs:\n  - "a/b"\n  - "a:b"\n')
    with pytest.raises(ManifestError) as info:
        load_manifest(path).expand("fp32")
    assert "'a_b'" in info.value.problems[0]


def test_no_collision_between_precisions_or_default_name(tmp_path):
    path = write(tmp_path, "j.yaml", "jobs:\n  - a\n  - A\n  - {prompt: a, seed: 1}\n")
    m = load_manifest(path)
    jobs = m.expand("fp32")
    assert len({j.output_name for j in jobs}) == 3
    assert {j.job_id for j in jobs}.isdisjoint({j.job_id for j in m.expand("bf16")})


def test_vbench_names(tmp_path):
    write(tmp_path, "vbench.txt", "a person swimming in ocean\na cat wearing sunglasses at a pool\n")
    path = write(tmp_path, "j.yaml", 'output_name: "{prompt}-{index}"\nseeds: [0, 1, 2, 3, 4]\nprompts_file: vbench.txt\n')
    names = [j.output_name for j in load_manifest(path).expand("fp32")]
    assert names[:2] == ["a person swimming in ocean-0", "a person swimming in ocean-1"]
    assert names[-1] == "a cat wearing sunglasses at a pool-4"
    assert len(names) == 10


def test_pathological_prompt_names(tmp_path):
    long = "word " * 2000
    path = write(
        tmp_path,
        "j.yaml",
        f'output_name: "{{prompt}}"\njobs:\n  - "../etc/passwd"\n  - CON\n  - "🐱 猫 قطة"\n  - "{long}"\n',
    )
    m = load_manifest(path)
    jobs = m.expand("fp32")
    names = [j.output_name for j in jobs]
    assert names[0] == "___etc_passwd"
    assert names[1] == "CON_"
    assert names[2] == "🐱 猫 قطة"
    assert len(names[3].encode()) <= 200
    assert len(m.warnings) == 1


def test_no_heavy_imports():
    import subprocess

    code = "import sys, batchgen.manifest.parse; print(any(m in sys.modules for m in ('torch', 'diffusers', 'click')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
