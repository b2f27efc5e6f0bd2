import unicodedata

import pytest

from batchgen.outputs.naming import MAX_STEM_BYTES, render_output_name, safe_file_stem

FORBIDDEN = set('/\\:*?"<>|')
RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(1, 10)} | {f"LPT{i}" for i in range(1, 10)}


def assert_safe(stem: str) -> None:
    assert stem
    assert stem not in (".", "..")
    assert len(stem.encode("utf-8")) <= MAX_STEM_BYTES
    assert not (set(stem) & FORBIDDEN)
    assert not any(unicodedata.category(c) == "Cc" for c in stem)
    assert not stem.endswith((".", " "))
    assert not stem.startswith(".")
    assert stem.split(".")[0].rstrip(" ").upper() not in RESERVED
    assert unicodedata.is_normalized("NFC", stem)


# -- render_output_name


def test_render_all_placeholders():
    name = render_output_name("{prompt}-{index}-{seed}-{job_id}", prompt="a cat", index=3, seed=42, job_id="abc")
    assert name == "a cat-3-42-abc"


def test_render_format_spec():
    assert render_output_name("{index:03d}", prompt="p", index=7, seed=0, job_id="x") == "007"


def test_render_vbench_convention():
    assert render_output_name("{prompt}-{index}", prompt="a dog running", index=4, seed=9, job_id="x") == "a dog running-4"


@pytest.mark.parametrize(
    "template, needle",
    [
        ("{promt}", "did you mean '{prompt}'"),
        ("{model}", "unknown placeholder '{model}'"),
        ("{}", "positional"),
        ("{0}", "positional"),
        ("{prompt", "not a valid template"),
        ("prompt}", "not a valid template"),
        ("{prompt.upper}", "unknown placeholder"),
        ("{seed:xyz}", "cannot be rendered"),
    ],
)
def test_render_bad_templates(template, needle):
    with pytest.raises(ValueError) as info:
        render_output_name(template, prompt="p", index=0, seed=0, job_id="x")
    assert needle in str(info.value)
    assert "output_name" in str(info.value)


def test_render_literal_braces():
    assert render_output_name("{{x}}-{seed}", prompt="p", index=0, seed=5, job_id="x") == "{x}-5"


# -- safe_file_stem


def test_plain_name_kept():
    assert safe_file_stem("a cat playing piano-0") == "a cat playing piano-0"


def test_path_traversal():
    stem = safe_file_stem("../etc/passwd")
    assert_safe(stem)
    assert stem == "___etc_passwd"


@pytest.mark.parametrize("name", ["..", ".", "", "   ", "...", " . ", "/", "\\"])
def test_degenerate_names(name):
    stem = safe_file_stem(name)
    assert_safe(stem)


@pytest.mark.parametrize("name", ["CON", "con", "Con.txt", "nul", "COM1", "lpt9.mp4", "AUX ", "prn.tar.gz"])
def test_windows_reserved(name):
    stem = safe_file_stem(name)
    assert_safe(stem)
    assert stem.lower().startswith(name.split(".")[0].strip().lower())


def test_not_reserved_left_alone():
    assert safe_file_stem("CONSOLE") == "CONSOLE"
    assert safe_file_stem("COM10") == "COM10"


def test_forbidden_characters():
    stem = safe_file_stem('a/b\\c:d*e?f"g<h>i|j')
    assert stem == "a_b_c_d_e_f_g_h_i_j"


def test_control_characters():
    stem = safe_file_stem("line1\nline2\ttab\x00nul\x7fdel")
    assert_safe(stem)
    assert stem == "line1_line2_tab_nul_del"


def test_trailing_dots_and_spaces():
    assert safe_file_stem("name. . ") == "name"


def test_emoji_and_rtl_kept():
    assert safe_file_stem("🐱 cat") == "🐱 cat"
    rtl = "قطة تعزف البيانو"
    assert safe_file_stem(rtl) == rtl
    assert safe_file_stem("חתול-0") == "חתול-0"


def test_nfc():
    decomposed = "cafe\u0301"
    assert safe_file_stem(decomposed) == "caf\u00e9"


def test_long_ascii_name():
    long = "a" * 10_000
    stem = safe_file_stem(long)
    assert_safe(stem)
    assert len(stem.encode()) <= MAX_STEM_BYTES
    assert stem.startswith("a" * 100)
    assert stem[-9] == "-" and all(c in "0123456789abcdef" for c in stem[-8:])


def test_long_names_stay_distinct():
    a = safe_file_stem("x" * 300 + "A")
    b = safe_file_stem("x" * 300 + "B")
    assert a != b
    assert a[:-9] == b[:-9]


def test_long_multibyte_cut_on_character_boundary():
    for prefix in ("", "a", "ab", "abc"):
        name = prefix + "🐱" * 100  # 4 bytes each
        stem = safe_file_stem(name)
        assert_safe(stem)
        stem.encode("utf-8").decode("utf-8")  # valid UTF-8
        assert "\ufffd" not in stem
    stem = safe_file_stem("é" * 200)  # 400 bytes
    assert_safe(stem)
    assert len(stem.encode()) <= MAX_STEM_BYTES


def test_exactly_at_limit_not_truncated():
    name = "b" * MAX_STEM_BYTES
    assert safe_file_stem(name) == name
    assert safe_file_stem(name + "c") != name + "c"


def test_over_255_bytes():
    stem = safe_file_stem("ü" * 200)  # 400 bytes
    assert len(stem.encode()) <= 200


def test_deterministic():
    name = "some prompt / with : stuff" * 20
    assert safe_file_stem(name) == safe_file_stem(name)


@pytest.mark.parametrize(
    "name",
    ["../etc/passwd", "CON", "a" * 10_000, "🐱" * 3000, "\u202eevil.exe", "a\u2028b", "  .hidden", "x\r\ny"],
)
def test_always_safe(name):
    assert_safe(safe_file_stem(name))


def test_bidirectional_controls_cannot_disguise_a_name():
    from batchgen.outputs.naming import safe_file_stem

    stem = safe_file_stem("a\u202egnp.exe")
    assert "\u202e" not in stem and stem.startswith("a_")
    assert safe_file_stem("family \U0001F468\u200D\U0001F469") == "family \U0001F468\u200D\U0001F469"
