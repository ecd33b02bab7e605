"""loss.csv: the current 8-column layout (with holdout_loss and editability), the 7-column one of runs written before
editability and the 6-column one of runs written before holdout_loss are all read; resuming an old file rewrites it in
the current layout, keeping its rows up to the resumed step."""

from __future__ import annotations

from core.runs.lossfile import COLUMNS, HEADER, HOLDOUT_HEADER, OLD_HEADER, LossLog, read_loss_csv


def test_rows_round_trip_with_the_held_out_loss(tmp_path):
    path = tmp_path / "loss.csv"
    log = LossLog(path)
    log.write(0, 0, None, 0.5, None, 0.0, holdout_loss=0.75, editability=1.0)
    log.write(1, 1, 0.25, None, 0.01, 1.23456)
    log.write(2, 1, 0.125, 0.4, 0.01, 2.5, holdout_loss=0.7, editability=0.875)
    log.close()
    assert path.read_text().splitlines()[0] == HEADER == ",".join(COLUMNS)
    rows = read_loss_csv(path)
    assert [(r["step"], r["val_loss"], r["holdout_loss"], r["editability"]) for r in rows] == [
        (0, 0.5, 0.75, 1.0), (1, None, None, None), (2, 0.4, 0.7, 0.875)]
    assert rows[1] == {"step": 1, "epoch": 1, "loss": 0.25, "val_loss": None, "lr": 0.01, "elapsed_s": 1.235,
                       "holdout_loss": None, "editability": None}


def test_old_files_are_read_and_a_cut_last_line_is_skipped(tmp_path):
    path = tmp_path / "loss.csv"
    path.write_text(f"{OLD_HEADER}\n0,0,,0.5,,0\n1,1,0.25,,0.01,1.5\n2,1,0.125,0.4,0.01,2.5\n3,2,0.1")
    rows = read_loss_csv(path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[2] == {"step": 2, "epoch": 1, "loss": 0.125, "val_loss": 0.4, "lr": 0.01, "elapsed_s": 2.5,
                       "holdout_loss": None, "editability": None}
    path.write_text(f"{HOLDOUT_HEADER}\n0,0,,0.5,,0,0.7\n1,1,0.25,,0.01,1.5,\n")  # before editability
    assert [(r["step"], r["holdout_loss"], r["editability"]) for r in read_loss_csv(path)] == [(0, 0.7, None),
                                                                                                (1, None, None)]
    # cut before the last cell
    path.write_text(f"{HEADER}\n0,0,,0.5,,0,0.7,1\n1,1,0.25,,0.01,1.5,,\n2,1,0.125,0.4,0.01,2.5,0.6")
    assert [(r["step"], r["holdout_loss"]) for r in read_loss_csv(path)] == [(0, 0.7), (1, None)]


def test_resuming_an_old_file_rewrites_it_in_the_current_layout(tmp_path):
    path = tmp_path / "loss.csv"
    path.write_text(f"{OLD_HEADER}\n0,0,,0.5,,0\n1,1,0.25,,0.01,1.5\n2,1,0.125,0.4,0.01,2.5\n3,2,0.1,,0.01,3.5\n4,2,0.")
    log = LossLog(path, keep_until_step=2)  # the state is at step 2: steps 3 and 4 are trained again
    log.write(3, 2, 0.09, 0.3, 0.01, 3.4, holdout_loss=0.6)
    log.close()
    assert path.read_text().splitlines() == [HEADER, "0,0,,0.5,,0,,", "1,1,0.25,,0.01,1.5,,",
                                             "2,1,0.125,0.4,0.01,2.5,,", "3,2,0.09,0.3,0.01,3.4,0.6,"]
    assert [(r["step"], r["val_loss"], r["holdout_loss"]) for r in read_loss_csv(path)] == [
        (0, 0.5, None), (1, None, None), (2, 0.4, None), (3, 0.3, 0.6)]


def test_resuming_a_current_file_keeps_its_rows(tmp_path):
    path = tmp_path / "loss.csv"
    log = LossLog(path)
    for step in range(5):
        even = step % 2 == 0
        log.write(step, 0, 0.5, 0.4 if even else None, 0.01, float(step), holdout_loss=0.6 if even else None)
    log.close()
    LossLog(path, keep_until_step=3).close()
    rows = read_loss_csv(path)
    assert [(r["step"], r["holdout_loss"]) for r in rows] == [(0, 0.6), (1, None), (2, 0.6), (3, None)]
