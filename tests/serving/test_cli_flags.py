"""Wrong parameter locations fail at start, naming the flag, before anything is created."""

from typer.testing import CliRunner

from headrace.cli import app


def test_train_refuses_a_bad_publish_location_before_touching_the_data_dir(tmp_path):
    data_dir = tmp_path / "data"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--source",
            "synthetic://?events=10",
            "--data-dir",
            str(data_dir),
            "--publish",
            "http://example/params",
        ],
    )
    assert result.exit_code == 2
    assert (
        "--publish" in result.output and "dir://PATH nor kafka://HOST:PORT/TOPIC" in result.output
    )
    assert not data_dir.exists()


def test_serve_refuses_a_bad_params_location():
    result = CliRunner().invoke(app, ["serve", "--params", "params-dir"])
    assert result.exit_code == 2
    assert "--params" in result.output and "dir://PATH" in result.output


def test_serve_refuses_a_memory_budget_below_a_page(tmp_path):
    result = CliRunner().invoke(
        app, ["serve", "--params", f"dir://{tmp_path}", "--memory-budget", "100"]
    )
    assert result.exit_code == 2
    assert "--memory-budget" in result.output


def test_a_worker_with_a_memory_budget_serves_from_a_replica(tmp_path):
    from headrace.serving import WorkerOptions, build_worker

    options = WorkerOptions(memory_budget=1 << 20, replica_dir=str(tmp_path / "replicas"))
    _, sync = build_worker(f"dir://{tmp_path / 'params'}", options)
    assert sync.state._memory_budget == 1 << 20
    assert sync.state._replica_dir == tmp_path / "replicas"
