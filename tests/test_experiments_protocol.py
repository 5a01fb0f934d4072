"""The evaluation protocol (experiments/protocol.py), without training."""

import dataclasses

import numpy as np
import pytest

from experiments import protocol


def test_evaluation_points_follow_syncs_and_end_at_the_last_step():
  assert protocol.evaluation_points(23, 5, 10, every_sync=False) == [10, 20,
                                                                      23]
  assert protocol.evaluation_points(20, 5, 10, every_sync=False) == [10, 20]
  assert protocol.evaluation_points(12, 5, 10, every_sync=True) == [5, 10, 12]
  assert protocol.evaluation_points(3, 5, 10, every_sync=False) == [3]


def test_sync_points_are_multiples_of_k_for_laperm_only():
  assert [p for p in range(1, 13) if protocol.is_sync_point(p, 4, True)] == [
      4, 8, 12]
  assert not any(protocol.is_sync_point(p, 4, False) for p in range(1, 13))


# `evaluate_raw` scores the trained weights and `evaluate_synced` their exact
# reconnect, with different scores, so each entry shows which it evaluated.
RAW, SYNCED = (0.5, 0.5), (0.25, 0.75)


def calls(log):
  def raw():
    log.append('raw')
    return RAW
  def synced():
    log.append('synced')
    return SYNCED
  return dict(evaluate_raw=raw, evaluate_synced=synced)


def test_a_sync_point_evaluates_the_exact_reconnect():
  log = []
  (entry,) = protocol.evaluate_point(10, is_laperm=True, is_sync=True,
                                     train_loss=0.7, **calls(log))
  assert entry == dict(step=10, train_loss=0.7, test_accuracy=0.25,
                       test_loss=0.75, after_sync=True)
  assert log == ['synced']


def test_a_last_step_off_sync_is_evaluated_raw_then_synced_explicitly():
  log = []
  raw, synced = protocol.evaluate_point(23, is_laperm=True, is_sync=False,
                                        train_loss=0.7, **calls(log))
  assert (raw['test_accuracy'], raw['after_sync']) == (0.5, False)
  assert raw['train_loss'] == 0.7
  assert (synced['test_accuracy'], synced['after_sync']) == (0.25, True)
  assert synced['explicit_final_sync'] and synced['train_loss'] is None
  assert log == ['raw', 'synced']
  # Adam: the raw weights only, never a reconnect.
  log.clear()
  (adam,) = protocol.evaluate_point(23, is_laperm=False, is_sync=False,
                                    train_loss=0.7, **calls(log))
  assert (adam['test_accuracy'], adam['after_sync']) == (0.5, False)
  assert log == ['raw']


def test_best_is_over_post_sync_evaluations_for_laperm():
  history = [dict(step=10, test_accuracy=0.8, after_sync=True),
             dict(step=23, test_accuracy=0.95, after_sync=False),
             dict(step=23, test_accuracy=0.85, after_sync=True)]
  assert protocol.select_best(history, is_laperm=True)['test_accuracy'] == 0.85
  assert protocol.select_best(history, is_laperm=False)['test_accuracy'] == 0.95
  assert 'optimistic' in protocol.best_selection_note(True)


def test_within_sync_bound():
  before = [np.array([1000.0, 0.5, -3.0], np.float32)]
  exact_values = [np.array([0.001, 0.75, -2.0], np.float32)]
  # What apply_updates gives: p + (q - p), rounded in float32.
  trained = [before[0] + (exact_values[0] - before[0])]
  assert protocol.within_sync_bound(trained, exact_values, before)
  off = [trained[0].copy()]
  off[0][1] = np.nextafter(np.nextafter(np.float32(0.75), np.float32(1)),
                           np.float32(1))  # two ulps of 0.75 away
  assert not protocol.within_sync_bound(off, exact_values, before)


def test_runconfig_defaults_are_the_cli_defaults():
  from experiments import cli  # pylint: disable=import-outside-toplevel
  from experiments import train  # pylint: disable=import-outside-toplevel
  from experiments import training  # pylint: disable=import-outside-toplevel
  parser = train.build_parser()
  flags = {a.dest for a in parser._actions}  # pylint: disable=protected-access
  fields = [f.name for f in dataclasses.fields(training.RunConfig)]
  assert set(fields) - flags == set()  # every field has its flag
  assert cli.config_from_args(cli.parse(parser, [])) == training.RunConfig()
  # The default run is the cpu_lenet300_mnist5k preset.
  preset = cli.config_from_args(cli.parse(parser, ['--preset',
                                                   'cpu_lenet300_mnist5k']))
  assert preset == training.RunConfig()
  with pytest.raises(SystemExit):
    cli.parse(parser, ['--init', 'dense'])  # choices come from the config
