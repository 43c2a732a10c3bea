"""The one CSV reader/writer (solution.csvio) and the checks of load_competition, on hand-written bytes."""
from __future__ import annotations

import re

import numpy as np
import pytest

from solution.csvio import TEST_COLUMNS, TRAIN_COLUMNS, read_table, write_table
from solution.data import load_competition, load_test_only
from solution.errors import UserError
from solution.labels import LABELS

TRAIN_HEADER, TEST_HEADER = "ImageID,Labels,Caption", "ImageID,Caption"
BROKEN = '36889.jpg,"Stop sign with added war" annotation at an intersection."'
BROKEN_CAPTION = 'Stop sign with added war" annotation at an intersection.'
GOOD_TEST = f"{TEST_HEADER}\r\n100.jpg,A dog.\r\n101.jpg,A cat.\r\n"


def crlf(*lines: str) -> str:
    return "".join(line + "\r\n" for line in lines)


def write(tmp_path, text, name="t.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def error_of(fn, *args) -> str:
    with pytest.raises(UserError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


# ---- reading -----------------------------------------------------------------------------------

def test_crlf_and_lf_files_give_the_same_rows(tmp_path):
    lines = (TRAIN_HEADER, "1.jpg,1,A man on a horse.", '2.jpg,3 8,"A car, a truck."')
    a = read_table(write(tmp_path, crlf(*lines), "a.csv"), TRAIN_COLUMNS)
    b = read_table(write(tmp_path, "\n".join(lines) + "\n", "b.csv"), TRAIN_COLUMNS)
    assert a.rows == b.rows == [("1.jpg", "1", "A man on a horse."), ("2.jpg", "3 8", "A car, a truck.")]
    assert not any(c.endswith("\r") for row in a.rows for c in row)
    assert a.line_numbers == [2, 3]


def test_bare_cr_inside_a_quoted_caption_is_kept(tmp_path):
    text = crlf(TRAIN_HEADER, '1.jpg,1,"Red motor \rscooter."', '2.jpg,1 3,"Bags.\r."', "3.jpg,2,Last.")
    table = read_table(write(tmp_path, text), TRAIN_COLUMNS)
    assert [r[2] for r in table.rows] == ["Red motor \rscooter.", "Bags.\r.", "Last."]
    assert table.repaired == []


def test_quoted_caption_with_commas_stays_one_field(tmp_path):
    text = crlf(TEST_HEADER, '7.jpg,"A dog, a cat, and a bird."', "8.jpg,plain")
    table = read_table(write(tmp_path, text), TEST_COLUMNS)
    assert table.rows == [("7.jpg", "A dog, a cat, and a bird."), ("8.jpg", "plain")]


def test_doubled_quotes_decode_to_one_quote(tmp_path):
    text = crlf(TRAIN_HEADER, '1.jpg,1,"A sign reading ""for rent""."', '2.jpg,1,"A ""nice"", big dog"')
    table = read_table(write(tmp_path, text), TRAIN_COLUMNS)
    assert [r[2] for r in table.rows] == ['A sign reading "for rent".', 'A "nice", big dog']
    assert table.repaired == []


@pytest.mark.parametrize("form", ["test", "train"])
def test_broken_kaggle_quote_row_is_one_repaired_row(tmp_path, form):
    broken = BROKEN if form == "test" else BROKEN.replace(",", ",1 13,", 1)
    header, columns = (TEST_HEADER, TEST_COLUMNS) if form == "test" else (TRAIN_HEADER, TRAIN_COLUMNS)
    extra = () if form == "test" else ("1",)
    before = ('1.jpg', *extra, "A quoted, caption")
    after = ('3.jpg', *extra, 'He said "hi", twice')
    text = crlf(header, ",".join(before[:-1]) + ',"A quoted, caption"', broken,
                ",".join(after[:-1]) + ',"He said ""hi"", twice"', ",".join(("4.jpg", *extra, "End.")))
    table = read_table(write(tmp_path, text), columns)
    assert len(table.rows) == 4
    assert table.rows[0] == before
    assert table.rows[1][0] == "36889.jpg" and table.rows[1][-1] == BROKEN_CAPTION
    assert table.rows[2] == after
    assert table.rows[3][0] == "4.jpg"
    assert table.repaired == [3] and table.line_numbers == [2, 3, 4, 5]


def test_broken_row_is_reported_by_load_competition(write_comp):
    test = crlf(TEST_HEADER, "100.jpg,A dog.", BROKEN, "101.jpg,A cat.")
    comp = load_competition(write_comp(crlf(TRAIN_HEADER, "1.jpg,1,x", "2.jpg,2,y"), test))
    assert comp.repaired == {"train.csv": [], "test.csv": [3]}
    assert comp.test["ImageID"].tolist() == ["100.jpg", "36889.jpg", "101.jpg"]
    assert comp.test["Caption"].tolist()[1] == BROKEN_CAPTION


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_pandas_csv_with_line_breaks_inside_quoted_captions_round_trips(tmp_path, line_end):
    import pandas as pd

    captions = ["a dog\non grass", "plain", 'two\nbreaks, a "quote"\nand a comma', "blank line\n\ninside",
                "ends in a break\n", "\nstarts with one", 'said ""hi""\n"', "last"]
    frame = pd.DataFrame({"ImageID": [f"{i}.jpg" for i in range(len(captions))],
                          "Labels": [str(i % 18 + 1) for i in range(len(captions))], "Caption": captions})
    path = tmp_path / "pandas.csv"
    frame.to_csv(path, index=False, lineterminator=line_end)
    assert path.read_bytes().count(b"\n") > len(captions) + 1  # the breaks really are inside the records
    table = read_table(path, TRAIN_COLUMNS)
    assert table.rows == list(frame.itertuples(index=False, name=None)) and table.repaired == []
    assert table.line_numbers == [2, 4, 5, 8, 11, 13, 15, 17]  # each record's first physical line


def test_line_numbers_after_a_multi_line_caption_are_physical(tmp_path):
    path = write(tmp_path, crlf(TRAIN_HEADER, '1.jpg,1,"one\ntwo\nthree"', "2.jpg,2,ok", "3.jpg"))
    assert f"{path} line 6:" in error_of(read_table, path, TRAIN_COLUMNS)


@pytest.mark.parametrize("after", [("3.jpg,1,A cat.", "4.jpg,2,fine"), ('3.jpg,1,"A cat, ""big"""', "4.jpg,2,end.")],
                         ids=["plain", "quoted"])
def test_quote_never_closed_stays_one_repaired_line(tmp_path, after):
    table = read_table(write(tmp_path, crlf(TRAIN_HEADER, "1.jpg,1,x", '2.jpg,1,"A dog on grass', *after)), TRAIN_COLUMNS)
    assert [r[0] for r in table.rows] == ["1.jpg", "2.jpg", "3.jpg", "4.jpg"]
    assert table.rows[1][2] == "A dog on grass" and table.repaired == [3] and table.line_numbers == [2, 3, 4, 5]


def test_a_closing_quote_after_the_next_record_does_not_join_them(tmp_path):
    path = write(tmp_path, crlf(TRAIN_HEADER, '2.jpg,1,"A dog on grass', "3.jpg,1,A cat.", 'grass"'))
    assert f"{path} line 4: expected 3 fields" in error_of(read_table, path, TRAIN_COLUMNS)


def test_broken_quote_row_next_to_a_multi_line_caption(tmp_path):
    text = crlf(TEST_HEADER, BROKEN, '5.jpg,"a dog\non grass"', BROKEN.replace("36889", "36890"))
    table = read_table(write(tmp_path, text), TEST_COLUMNS)
    assert table.rows == [("36889.jpg", BROKEN_CAPTION), ("5.jpg", "a dog\non grass"), ("36890.jpg", BROKEN_CAPTION)]
    assert table.repaired == [2, 5] and table.line_numbers == [2, 3, 5]


@pytest.mark.parametrize("header", ["", "ImageId,Labels,Caption", "ImageID,Label,Caption", "ImageID,Caption",
                                    "1.jpg,1,A man."])
def test_missing_or_misspelt_header_names_file_and_line_1(tmp_path, header):
    text = crlf(header, "1.jpg,1,A man.") if header != "1.jpg,1,A man." else crlf(header, "2.jpg,2,B.")
    path = write(tmp_path, text)
    message = error_of(read_table, path, TRAIN_COLUMNS)
    assert f"{path} line 1" in message and "ImageID,Labels,Caption" in message


def test_empty_file_is_an_error(tmp_path):
    path = write(tmp_path, b"")
    assert str(path) in error_of(read_table, path, TRAIN_COLUMNS)


def test_header_only_is_an_error(write_comp):
    root = write_comp(crlf(TRAIN_HEADER), GOOD_TEST)
    assert "train.csv" in error_of(load_competition, root)


def test_trailing_empty_lines_and_bom_are_fine(tmp_path):
    text = b"\xef\xbb\xbf" + crlf(TRAIN_HEADER, "1.jpg,1,A.", "2.jpg,2,B.").encode() + b"\r\n\r\n"
    table = read_table(write(tmp_path, text), TRAIN_COLUMNS)
    assert table.rows == [("1.jpg", "1", "A."), ("2.jpg", "2", "B.")]


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    text = crlf(TRAIN_HEADER, "1.jpg,1,fine").encode() + b"2.jpg,1,caf\xe9 au lait\r\n"
    path = write(tmp_path, text)
    message = error_of(read_table, path, TRAIN_COLUMNS)
    assert f"{path} line 3" in message and "UTF-8" in message


def test_empty_caption_and_a_49_word_caption_are_fine(tmp_path):
    long = " ".join(f"word{i}" for i in range(49))
    text = crlf(TRAIN_HEADER, "1.jpg,1,", '2.jpg,2,""', f"3.jpg,3,{long}", "4.jpg,4,x")
    table = read_table(write(tmp_path, text), TRAIN_COLUMNS)
    assert [r[2] for r in table.rows] == ["", "", long, "x"]
    assert len(table.rows[2][2].split()) == 49


def test_too_few_fields_names_the_line(tmp_path):
    path = write(tmp_path, crlf(TRAIN_HEADER, "1.jpg,1,ok", "2.jpg"))
    assert f"{path} line 3" in error_of(read_table, path, TRAIN_COLUMNS)


# ---- load_competition checks -------------------------------------------------------------------

@pytest.mark.parametrize("labels", ["12", "20", "0", "", "1 x", "-1", "1 12"])
def test_bad_label_names_file_and_line(write_comp, labels):
    root = write_comp(crlf(TRAIN_HEADER, "1.jpg,1,ok", f"2.jpg,{labels},A caption.", "3.jpg,2,ok"), GOOD_TEST)
    message = error_of(load_competition, root)
    assert f"{root / 'train.csv'} line 3" in message


def test_double_space_between_labels_parses(write_comp):
    comp = load_competition(write_comp(crlf(TRAIN_HEADER, "1.jpg,1  3,A.", "2.jpg, 19 ,B."), GOOD_TEST))
    expected = np.zeros((2, len(LABELS)), np.uint8)
    expected[0, [LABELS.index(1), LABELS.index(3)]] = 1
    expected[1, LABELS.index(19)] = 1
    np.testing.assert_array_equal(comp.y, expected)
    assert comp.train["ImageID"].tolist() == ["1.jpg", "2.jpg"]


def test_duplicate_image_id_names_both_lines(write_comp):
    root = write_comp(crlf(TRAIN_HEADER, "1.jpg,1,a", "2.jpg,2,b", "3.jpg,3,c", "2.jpg,4,d"), GOOD_TEST)
    message = error_of(load_competition, root)
    assert f"{root / 'train.csv'} line 5" in message and "2.jpg" in message
    assert re.search(r"\bline 3\b", message.split("line 5", 1)[1]), message


def test_duplicate_image_id_in_test_is_an_error(write_comp):
    root = write_comp(crlf(TRAIN_HEADER, "1.jpg,1,a"), crlf(TEST_HEADER, "9.jpg,a", "9.jpg,b"))
    assert f"{root / 'test.csv'} line 3" in error_of(load_competition, root)


def test_test_image_also_in_train_is_an_error(write_comp):
    root = write_comp(crlf(TRAIN_HEADER, "1.jpg,1,a", "2.jpg,2,b"), crlf(TEST_HEADER, "5.jpg,x", "2.jpg,y"))
    message = error_of(load_competition, root)
    assert f"{root / 'test.csv'} line 3" in message and "2.jpg" in message and "line 3)" in message


def test_empty_image_id_is_an_error(write_comp):
    root = write_comp(crlf(TRAIN_HEADER, "1.jpg,1,a", ",2,b"), GOOD_TEST)
    assert f"{root / 'train.csv'} line 3" in error_of(load_competition, root)


BAD_IDS = ["../evil.jpg", "..", ".", "/etc/passwd", "data/1.jpg", "sub\\1.jpg", "a\x00.jpg", "a\rb.jpg", "a\tb.jpg",
           "a\x85b.jpg"]


@pytest.mark.parametrize("image_id", BAD_IDS, ids=repr)
@pytest.mark.parametrize("loader", [load_competition, load_test_only], ids=lambda f: f.__name__)
def test_image_id_must_be_a_plain_file_name(write_comp, loader, image_id):
    root = write_comp(crlf(TRAIN_HEADER, "1.jpg,1,a", f"{image_id},2,b"), crlf(TEST_HEADER, "5.jpg,x", f"{image_id},y"))
    file = "train.csv" if loader is load_competition else "test.csv"
    message = error_of(loader, root)
    assert f"{root / file} line 3: ImageID {image_id!r} is not a plain file name" in message


@pytest.mark.parametrize("image_id", ["..a.jpg", "a..jpg", "x y.jpg", "caf\u00e9.jpg", ".hidden.jpg"])
def test_unusual_but_plain_image_ids_are_accepted(write_comp, image_id):
    comp = load_competition(write_comp(crlf(TRAIN_HEADER, f"{image_id},1,a"), crlf(TEST_HEADER, "5.jpg,x")))
    assert comp.train["ImageID"].tolist() == [image_id]


def test_test_only_loader_checks_ids(write_comp):
    root = write_comp(crlf(TRAIN_HEADER, "1.jpg,1,a"), crlf(TEST_HEADER, "5.jpg,x", ",y"))
    assert f"{root / 'test.csv'} line 3" in error_of(load_test_only, root)
    (root / "test.csv").write_text(crlf(TEST_HEADER, "5.jpg,x", "6.jpg,y", "5.jpg,z"))
    assert f"{root / 'test.csv'} line 4" in error_of(load_test_only, root)
    (root / "test.csv").write_text(crlf(TEST_HEADER, "5.jpg,x", BROKEN))
    comp = load_test_only(root)
    assert comp.test["ImageID"].tolist() == ["5.jpg", "36889.jpg"] and comp.repaired == {"test.csv": [3]}


def test_missing_data_dir_and_missing_train_csv(tmp_path, write_comp):
    assert "data_dir" in error_of(load_competition, tmp_path / "nope")
    root = write_comp(crlf(TRAIN_HEADER, "1.jpg,1,a"), GOOD_TEST)
    (root / "train.csv").unlink()
    assert "train.csv" in error_of(load_competition, root)


def test_demo_dataset_loads_with_labels_matching_the_csv(demo_csv):
    comp = load_competition(demo_csv)
    assert (len(comp.train), len(comp.test)) == (60, 20)
    assert comp.y.shape == (60, len(LABELS)) and comp.y.sum(axis=1).min() >= 1
    first = [int(t) for t in comp.train["Labels"][0].split()]
    assert sorted(np.asarray(LABELS)[comp.y[0].astype(bool)].tolist()) == sorted(first)
    assert any('"' in c for c in comp.train["Caption"]) or any("," in c for c in comp.train["Caption"])


def test_fingerprint_changes_with_the_bytes(demo_csv):
    before = load_competition(demo_csv).fingerprint
    path = demo_csv / "test.csv"
    path.write_bytes(path.read_bytes().replace(b"A ", b"a ", 1))
    assert load_competition(demo_csv).fingerprint != before


# ---- writing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_write_then_read_round_trips(tmp_path, line_end):
    rows = [("1.jpg", "1 3", "A dog, a cat."), ("2.jpg", "2", 'He said "hi".'), ("3.jpg", "4", "Bare \r inside"),
            ("4.jpg", "5", '"'), ("5.jpg", "6", ""), ("6.jpg", "7", ' spaced, "both" \r\r '), ("7.jpg", "8", "plain"),
            ("8.jpg", "9", 'two\nlines, "quoted"\n'), ("9.jpg", "10", "crlf\r\ninside"), ("10.jpg", "11", "last")]
    path = tmp_path / "rt.csv"
    write_table(path, TRAIN_COLUMNS, rows, line_end=line_end)
    table = read_table(path, TRAIN_COLUMNS)
    assert table.rows == rows and table.repaired == []
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
