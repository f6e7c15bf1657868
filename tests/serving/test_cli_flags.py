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
