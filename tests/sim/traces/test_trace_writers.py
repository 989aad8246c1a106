"""Writing traces: the native CSV written back exactly, and whatever the writer writes the reader reads back."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from sim.traces.model import Trace
from sim.traces.readers import read_trace
from sim.traces.writers import write_trace


def write(tmp_path, text, name="trace.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_native_round_trip_with_optional_columns(tmp_path):
    src = write(
        tmp_path,
        "arrival_s,prompt_tokens,output_tokens,n,prefix_group,prefix_tokens\n0,300,20,2,0,200\n0.1234567,250,20,1,,0\n",
    )
    t = read_trace(src)
    out = str(tmp_path / "out.csv")
    assert write_trace(t, out) == "native"
    text = open(out).read()
    assert text == (
        "arrival_s,prompt_tokens,output_tokens,n,prefix_group,prefix_tokens\n0,300,20,2,0,200\n0.1234567,250,20,1,,0\n"
    )


@given(
    st.lists(
        st.tuples(
            st.floats(0, 1e6, allow_nan=False),
            st.integers(1, 10**6),
            st.integers(1, 10**6),
            st.integers(1, 8),
            st.integers(-1, 5),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_native_write_read_round_trip(tmp_path_factory, rows):
    """Whatever the writer writes, the reader reads back (times to the written 100 ns resolution)."""

    rows.sort(key=lambda r: r[0])
    arrivals, prompt, output, n, group = (np.array(c) for c in zip(*rows))
    tokens = np.where(group >= 0, np.minimum(prompt, 7), 0)
    t = Trace(
        "x",
        "native",
        arrivals.astype(float),
        prompt.astype(np.int64),
        output.astype(np.int64),
        columns={
            "n": n.astype(np.int64),
            "prefix_group": group.astype(np.int64),
            "prefix_tokens": tokens.astype(np.int64),
        },
    )
    path = str(tmp_path_factory.mktemp("rt") / "t.csv")
    write_trace(t, path)
    back = read_trace(path)
    assert np.allclose(back.arrival_s, t.arrival_s, rtol=0, atol=1e-7)
    assert back.prompt_tokens.tolist() == t.prompt_tokens.tolist()
    assert back.output_tokens.tolist() == t.output_tokens.tolist()
    for name in t.columns:
        assert back.columns[name].tolist() == t.columns[name].tolist()
