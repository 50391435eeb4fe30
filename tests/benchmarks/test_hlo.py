"""The HLO collective reader on each replica-group form XLA has printed."""

import pytest

from benchmarks import hlo

# The same 2x2 (data x model) groups in the forms of different XLA versions.
MODEL_GROUPS = [[0, 1], [2, 3]]
DATA_GROUPS = [[0, 2], [1, 3]]


@pytest.mark.parametrize(
    "text,groups",
    [
        # Explicit lists (jax <= 0.10).
        ("{{0,1},{2,3}}", MODEL_GROUPS),
        ("{{0,2},{1,3}}", DATA_GROUPS),
        ("{{0},{1},{2},{3}}", [[0], [1], [2], [3]]),
        ("{}", [[0, 1, 2, 3]]),
        # Iota lists (jax <= 0.10).
        ("[2,2]<=[4]", MODEL_GROUPS),
        ("[2,2]<=[2,2]T(1,0)", DATA_GROUPS),
        ("[1,4]<=[4]", [[0, 1, 2, 3]]),
        # Mesh axes (jax >= 0.11).
        ("mesh['data'=2,'model'=2] {'model'}", MODEL_GROUPS),
        ("mesh['data'=2,'model'=2] {'data'}", DATA_GROUPS),
        ("mesh['data'=1,'model'=2] {'model'}", [[0, 1]]),
        ("mesh['data'=2,'model'=2] {'data','model'}", [[0, 1, 2, 3]]),
        ("mesh['data'=2,'model'=2] {'model','data'}", [[0, 2, 1, 3]]),
        ("mesh['data'=2,'model'=2] {}", [[0], [1], [2], [3]]),
        ("mesh[data=2,model=2] {model}", MODEL_GROUPS),
        # A device order other than 0, 1, 2, 3, and a sub-axis of size 2 of an
        # axis of size 4 (pre-size 1: the slower-varying half).
        (
            "mesh['data'=2,'model'=2], device_ids=([[0,2],[1,3]]) {'model'}",
            DATA_GROUPS,
        ),
        ("mesh['x'=4] {'x':(1)2}", [[0, 2], [1, 3]]),
        ("mesh['x'=4] {'x':(2)2}", [[0, 1], [2, 3]]),
    ],
)
def test_replica_group_forms(text, groups):
  line = f"%ag = f32[4]{{0}} all-gather(%x), replica_groups={text}, dims={{0}}"
  assert hlo.replica_groups(line, num_devices=4) == groups


def test_no_replica_groups_means_all_devices():
  assert hlo.replica_groups("%ar = f32[4]{0} all-reduce(%x)", 2) == [[0, 1]]


def test_unknown_form_is_an_error_not_an_empty_list():
  line = "%ag = f32[4]{0} all-gather(%x), replica_groups=<new form>"
  with pytest.raises(hlo.HloParseError, match="unknown replica_groups form"):
    hlo.collectives(line, (2, 2))


def test_collectives_on_hlo_lines():
  """Tuple results, async starts, bytes sent and the mesh axis of a group."""
  text = "\n".join(
      [
          "  %ag = bf16[8,26]{1,0} all-gather(%x), channel_id=1, "
          "replica_groups=[2,2]<=[4], dimensions={1}",
          "  %ar = (f32[10]{0}, f32[3,2]{1,0}) all-reduce(%a, %b), "
          "replica_groups={{0,2},{1,3}}, to_apply=%add, "
          'metadata={op_name="jit(f)/transpose(jvp())/psum"}',
          "  %rs = f32[4]{0} reduce-scatter-start(%y), "
          "replica_groups=[2,2]<=[2,2]T(1,0), dimensions={0}",
          "  %one = f32[7]{0} all-reduce(%z), replica_groups={{0},{1},{2},{3}}",
          "  %ags = (f32[2]{0}, f32[4]{0}) all-gather-start(%w), "
          "replica_groups=mesh['data'=2,'model'=2] {'model'}, dimensions={0}",
      ]
  )
  got = hlo.collectives(text, (2, 2))
  assert [
      (c["op"], c["axis"], c["phase"], c["result_bytes"], c["sent_bytes"])
      for c in got
  ] == [
      ("all-gather", "model", "forward", 8 * 26 * 2, 8 * 13 * 2),
      ("all-reduce", "data", "backward", 64, 64),
      ("reduce-scatter", "data", "forward", 16, 16),
      ("all-reduce", "none", "forward", 28, 0),
      ("all-gather", "model", "forward", 16, 8),
  ]
  assert hlo.summarize(got) == {
      "model_forward": 216.0,
      "model_backward": 0.0,
      "data": 80.0,
      "total": 296.0,
  }
