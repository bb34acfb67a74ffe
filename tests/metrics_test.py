"""Averages of step metrics between logs (clu.metrics), the finiteness check, the line, and
the writers that get each step once."""

import numpy as np
import pytest

from comatch_jax.trainer import metrics


def _steps(losses, skipped=None):
    steps = [
        {"loss": np.float32(v), "param_norm": np.float32(10 + i)} for i, v in enumerate(losses)
    ]
    if skipped is not None:
        for step, flag in zip(steps, skipped):
            step["skipped"] = np.bool_(flag)
    return steps


def test_means_over_the_steps_since_the_last_log():
    means = metrics.average_over_steps(_steps([1.0, 2.0, 6.0]))
    assert means == pytest.approx({"loss": 3.0, "param_norm": 11.0})


def test_skipped_steps_are_left_out_and_counted():
    means = metrics.average_over_steps(
        _steps([1.0, np.nan, 3.0, np.inf], skipped=[False, True, False, True])
    )
    assert means == pytest.approx({"loss": 2.0, "param_norm": 11.0, "skipped_steps": 2})


def test_a_window_of_only_skipped_steps_is_averaged_whole():
    means = metrics.average_over_steps(_steps([np.nan, 1.0], skipped=[True, True]))
    assert np.isnan(means["loss"]) and means["param_norm"] == 10.5
    assert means["skipped_steps"] == 2


def test_pseudo_label_accuracy_is_weighted_by_the_kept_mass_and_absent_when_none_was_kept():
    steps = [
        {"mask_rate": np.float32(m), "pseudo_label_acc": np.float32(a)}
        for m, a in [(0.5, 0.8), (0.0, 0.0), (0.25, 0.4)]
    ]
    means = metrics.average_over_steps(steps)
    # (0.5 * 0.8 + 0.25 * 0.4) / 0.75: the step that kept nothing does not pull it to 0.
    assert means["pseudo_label_acc"] == pytest.approx(0.5 / 0.75)
    assert means["mask_rate"] == pytest.approx(0.25)
    nothing_kept = metrics.average_over_steps(steps[1:2] * 3)
    assert "pseudo_label_acc" not in nothing_kept and nothing_kept["mask_rate"] == 0.0


def test_check_finite_names_the_step_the_terms_and_where_a_rerun_starts():
    with pytest.raises(FloatingPointError, match=r"Non-finite loss in the steps up to 7") as e:
        metrics.check_finite(7, {"loss": np.nan, "param_norm": 1.0}, "stop", lambda: 6)
    assert "checkpoint (step 6) is kept" in str(e.value) and "resume from step 6" in str(e.value)
    # 'skip': only the params matter; skipped losses may be non-finite.
    metrics.check_finite(7, {"loss": np.nan, "param_norm": 1.0}, "skip", lambda: 6)
    with pytest.raises(FloatingPointError, match="param_norm"):
        metrics.check_finite(7, {"loss": 1.0, "param_norm": np.inf}, "skip", lambda: 6)
    # Before the first checkpoint nothing is claimed to be kept.
    with pytest.raises(FloatingPointError) as e:
        metrics.check_finite(1, {"loss": np.nan, "param_norm": 1.0}, "stop", lambda: None)
    assert "no checkpoint had been saved yet" in str(e.value) and "kept" not in str(e.value)
    assert "start again from step 0" in str(e.value)


def test_the_progress_line():
    line = metrics.progress_line(
        20, 100, {"loss": 1.23456, "mask_rate": 0.5, "grad_norm": 3.0}, 1234.4, 3725.4
    )
    assert line == "step 20/100 loss=1.2346 mask_rate=0.5000 | 1234 img/s | ETA 1:02:05"
    # Skipped steps are shown; a speed not measured yet is '?', not nan.
    line = metrics.progress_line(
        1, 100, {"loss": 1.0, "skipped_steps": 2.0}, float("nan"), float("nan")
    )
    assert line == "step 1/100 loss=1.0000 skipped_steps=2 | ? img/s | ETA ?"
    # An adaptive threshold is shown with the mask rate it explains (tau_t starts at 1/C, so
    # mask_rate=1 early on); SoftMatch's mean confidence under its own name.
    line = metrics.progress_line(
        5, 100, {"mask_rate": 1.0, "global_threshold": 0.1, "loss": 2.0}, 10.0, 1.0
    )
    assert line == "step 5/100 loss=2.0000 mask_rate=1.0000 tau=0.1000 | 10 img/s | ETA 0:00:01"
    line = metrics.progress_line(5, 100, {"confidence_mean": 0.25}, 10.0, 1.0)
    assert line == "step 5/100 mu_t=0.2500 | 10 img/s | ETA 0:00:01"


def test_scalars_are_written_once_their_checkpoint_is_committed(tmp_path):
    recorded = []

    class Recording:
        def write_scalars(self, step, scalars):
            recorded.append((step, scalars))

        def flush(self):
            pass

    writer = metrics.create_writer(str(tmp_path), primary=True, writer=Recording())
    for step in (5, 10, 15):
        writer.write_scalars(step, {"train/loss": float(step)})
    writer.release(None)  # no checkpoint yet
    assert recorded == [] and not (tmp_path / "metrics.jsonl").exists()
    writer.release(10)
    writer.release(10)  # nothing new
    assert recorded == [(5, {"train/loss": 5.0}), (10, {"train/loss": 10.0})]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines == ['{"step": 5, "train/loss": 5.0}', '{"step": 10, "train/loss": 10.0}']
    writer.release(15)
    assert [step for step, _ in recorded] == [5, 10, 15]
    # Other processes than 0 write nothing.
    other = metrics.create_writer(str(tmp_path / "other"), primary=False, writer=Recording())
    other.write_scalars(5, {"train/loss": 1.0})
    other.release(5)
    assert len(recorded) == 3 and not (tmp_path / "other").exists()
