"""Settings: sources and their precedence, every problem at once, ``troupe check-config``."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import msgspec
import pytest

import tests.server
from actors.model import PRESETS
from api.config.checks import check_settings, load_and_check, version_tuple
from api.config.diagnostics import ConfigProblem, Severity, format_problems, has_errors, warning
from api.config.flags import add_arguments, overrides_from_args
from api.config.settings import (
    FIELDS,
    GIB,
    MIB,
    ModelSize,
    Settings,
    field_docs,
    is_loopback,
    load_settings,
)

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-very-secret-value"


def parse_flags(*argv: str) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return overrides_from_args(parser.parse_args(argv))


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def messages(problems: list[ConfigProblem], setting: str | None = None) -> list[str]:
    return [p.message for p in problems if setting is None or p.setting == setting]


def check_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # The real environment minus any TROUPE_* setting of the machine running the tests.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TROUPE_")}
    return subprocess.run(
        [sys.executable, "-m", "api.cli.main", "check-config", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=clean | (env or {}),
        timeout=60,
    )


@pytest.fixture
def listening() -> Iterator[int]:
    """A port on 127.0.0.1 with a real listener on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def free_port() -> int:
    return tests.server.free_port()


# -- the struct ------------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    s = Settings()
    assert (s.host, s.port, s.model, s.model_size) == ("127.0.0.1", 8000, None, "tiny")
    assert (s.api_keys, s.admin_key, s.cors_origins) == ([], None, [])
    assert (s.max_body_bytes, s.chat_timeout, s.completion_timeout) == (MIB, 900.0, 600.0)
    assert (s.queue_max_requests, s.queue_max_prompt_tokens, s.max_running) == (256, 262144, 32)
    assert (s.rate_limit_per_second, s.rate_limit_burst, s.drain_timeout) == (0.0, 20, 30.0)
    assert (s.cache_max_entries, s.cache_max_bytes, s.cache_dir) == (32, 2 * GIB, None)
    assert (s.memory_high_water, s.memory_low_water) == (0.85, 0.75)
    assert (s.log_level, s.allow_remote_faults) == ("info", False)
    assert get_args(ModelSize) == tuple(PRESETS)  # the embedded model's sizes


def test_every_setting_has_a_docstring_and_a_flag() -> None:
    assert set(field_docs()) == set(FIELDS)
    assert all(len(doc) > 10 for doc in field_docs().values())
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    assert {"--" + name.replace("_", "-") for name in FIELDS} <= flags


def test_the_keys_never_show_in_the_repr() -> None:
    text = repr(Settings(api_keys=[SECRET, "other-key"], admin_key=SECRET))
    assert SECRET not in text and "other-key" not in text
    assert "api_keys=['***', '***']" in text and "admin_key='***'" in text


# -- sources -------------------------------------------------------------------


def test_precedence_is_defaults_then_toml_then_env_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path / "troupe.toml",
        'port = 8100\nchat_timeout = 10\nlog_level = "debug"\napi_keys = ["from-file"]\n',
    )
    env = {"TROUPE_PORT": "8200", "TROUPE_CHAT_TIMEOUT": "20", "HOME": "/ignored"}
    settings, problems = load_settings(parse_flags("--port", "8300"), env, path)
    assert problems == []
    assert settings.port == 8300  # flag over env over file
    assert settings.chat_timeout == 20.0  # env over file
    assert settings.log_level == "debug"  # file over default
    assert settings.api_keys == ["from-file"]
    assert settings.drain_timeout == 30.0  # default


def test_the_config_file_comes_from_troupe_config_unless_given(tmp_path: Path) -> None:
    by_env = write(tmp_path / "env.toml", "port = 8001\n")
    by_flag = write(tmp_path / "flag.toml", "port = 8002\n")
    settings, _ = load_settings({}, {"TROUPE_CONFIG": by_env}, None)
    assert settings.port == 8001
    settings, _ = load_settings({}, {"TROUPE_CONFIG": by_env}, by_flag)
    assert settings.port == 8002


def test_environment_strings_are_converted_leniently() -> None:
    env = {
        "TROUPE_API_KEYS": " a, b ,,c ",
        "TROUPE_ALLOW_REMOTE_FAULTS": "yes",
        "TROUPE_MEMORY_LOW_WATER": "0.5",
        "TROUPE_LOG_LEVEL": "DEBUG",
        "TROUPE_MODEL": "",  # empty: unset
        "TROUPE_MAX_RUNNING": " 8 ",
    }
    settings, problems = load_settings({}, env, None)
    assert problems == []
    assert settings.api_keys == ["a", "b", "c"]
    assert settings.allow_remote_faults is True
    assert (settings.memory_low_water, settings.log_level) == (0.5, "debug")
    assert (settings.model, settings.max_running) == (None, 8)


def test_flags_convert_like_the_environment_and_booleans_negate() -> None:
    flags = parse_flags(
        "--cors-origins", "https://a.example,https://b.example", "--no-allow-remote-faults"
    )
    settings, problems = load_settings(flags, {"TROUPE_ALLOW_REMOTE_FAULTS": "1"}, None)
    assert problems == []
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.allow_remote_faults is False
    assert parse_flags() == {}
    with pytest.raises(TypeError, match="not settings: prot"):
        load_settings({"prot": 1}, {}, None)


def test_each_bad_value_is_reported_and_the_next_source_is_used(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.toml", 'port = "eighty"\nmodel_size = "huge"\nqueue_max_requests = 9\n'
    )
    env = {"TROUPE_PORT": "9000", "TROUPE_CHAT_TIMEOUT": "soon"}
    settings, problems = load_settings(parse_flags("--max-running", "many"), env, path)
    assert messages(problems) == [
        f"'port' in {path} must be an integer, got 'eighty'",
        f"'model_size' in {path} must be one of 'tiny', 'small', got 'huge'",
        "TROUPE_CHAT_TIMEOUT must be a number, got 'soon'",
        "--max-running must be an integer, got 'many'",
    ]
    assert all(p.severity is Severity.ERROR for p in problems)
    assert (settings.port, settings.model_size, settings.queue_max_requests) == (9000, "tiny", 9)
    assert (settings.chat_timeout, settings.max_running) == (900.0, 32)


def test_an_unknown_key_in_the_file_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "t.toml", "prot = 9000\ncompletely_unrelated = 1\n")
    _, problems = load_settings({}, {}, path)
    assert messages(problems) == [
        "unknown setting 'prot' in the config file; did you mean 'port'?",
        "unknown setting 'completely_unrelated' in the config file",
    ]
    assert has_errors(problems)


def test_an_unknown_troupe_variable_is_a_warning_with_a_suggestion() -> None:
    env = {"TROUPE_PROT": "9000", "TROUPE_CONFIG": "", "OTHER_PROT": "1"}
    _, problems = load_settings({}, env, None)
    assert problems == [
        warning(None, "unknown setting TROUPE_PROT in the environment; did you mean TROUPE_PORT?")
    ]


def test_a_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "t.toml", 'host = "127.0.0.1"\nport = 8000\nmodel = \n')
    settings, problems = load_settings({}, {}, path)
    assert len(problems) == 1
    assert problems[0].setting is None
    assert "is not valid TOML" in problems[0].message and "line 3" in problems[0].message
    assert settings == Settings()


def test_a_missing_or_binary_config_file_is_a_problem(tmp_path: Path) -> None:
    _, problems = load_settings({}, {}, str(tmp_path / "absent.toml"))
    assert messages(problems) == [f"config file {tmp_path / 'absent.toml'} does not exist"]
    (tmp_path / "bin.toml").write_bytes(b"port = \xff\n")
    _, problems = load_settings({}, {}, str(tmp_path / "bin.toml"))
    assert len(problems) == 1 and "bin.toml" in problems[0].message


# -- checks ----------------------------------------------------------------------


def test_a_port_with_a_listener_is_reported_in_use(listening: int) -> None:
    problems = check_settings(Settings(port=listening))
    assert messages(problems, "port") == [
        f"{listening} is already in use on '127.0.0.1' (is a server running?)"
    ]


def test_a_free_port_and_the_defaults_have_no_problems(free_port: int) -> None:
    assert check_settings(Settings(port=free_port)) == []


def test_port_range_and_privileged_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    assert messages(check_settings(Settings(port=70000)), "port") == [
        "must be between 1 and 65535, got 70000"
    ]
    # The check asks for the effective uid and binds nothing (probe_port=False),
    # so both sides are tested whoever runs the suite (CI runs as root).
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    low = check_settings(Settings(port=80), probe_port=False)
    assert [(p.setting, p.severity) for p in low] == [("port", Severity.WARNING)]
    assert low[0].message == (
        "80 is a privileged port: binding it needs root or CAP_NET_BIND_SERVICE"
    )
    assert check_settings(Settings(port=1024), probe_port=False) == []
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert check_settings(Settings(port=80), probe_port=False) == []


def test_an_unresolvable_or_foreign_host_is_reported(free_port: int) -> None:
    problems = check_settings(Settings(host="no-such-host.invalid", port=free_port))
    assert messages(problems, "host") == ["'no-such-host.invalid' does not resolve to an address"]
    problems = check_settings(Settings(host="192.0.2.1", port=free_port, api_keys=["k"]))
    assert messages(problems, "host") == ["'192.0.2.1' is not an address of this machine"]


def test_every_range_problem_is_listed() -> None:
    bad: dict[str, object] = {
        "chat_timeout": 0.0,
        "completion_timeout": float("nan"),
        "drain_timeout": float("inf"),
        "queue_max_requests": 0,
        "queue_max_prompt_tokens": -1,
        "max_running": 0,
        "max_body_bytes": 0,
        "cache_max_entries": 0,
        "cache_max_bytes": -1,
        "rate_limit_per_second": -1.0,
        "memory_high_water": 1.0,
        "memory_low_water": 0.0,
    }
    problems = check_settings(msgspec.structs.replace(Settings(), **bad), probe_port=False)
    assert {p.setting for p in problems if p.severity is Severity.ERROR} == set(bad)
    assert "must be a positive number of seconds, got 0.0" in messages(problems, "chat_timeout")


def test_contradictory_settings_are_reported() -> None:
    settings = Settings(
        memory_high_water=0.7,
        memory_low_water=0.8,
        api_keys=[SECRET, SECRET, ""],
        admin_key=SECRET,
        rate_limit_per_second=5.0,
        rate_limit_burst=0,
        allow_remote_faults=True,
        cors_origins=["https://ok.example", "https://bad.example/", "*", "ftp://x"],
    )
    problems = check_settings(settings, probe_port=False)
    lines = format_problems(problems).splitlines()
    assert [line for line in lines if "cors_origins" not in line] == [
        "error    api_keys: contains an empty key",
        "error    admin_key: is also one of the api_keys; the admin key must be separate",
        "error    memory_low_water: must be below memory_high_water (0.8 >= 0.7)",
        "error    rate_limit_burst: must be at least 1 (with the rate limit on or off), got 0",
        "warning  api_keys: lists the same key more than once",
        "warning  allow_remote_faults: has no effect: fault_injection is off",
    ]
    assert len([line for line in lines if "cors_origins" in line]) == 2
    assert SECRET not in "\n".join(lines)


def test_fault_injection_is_off_by_default_and_refused_beyond_loopback() -> None:
    assert Settings().fault_injection is False
    assert check_settings(Settings(fault_injection=True), probe_port=False) == []
    remote = Settings(host="0.0.0.0", api_keys=["k"], fault_injection=True)
    problems = check_settings(remote, probe_port=False)
    assert [(p.severity, p.setting) for p in problems] == [(Severity.ERROR, "fault_injection")]
    allowed = msgspec.structs.replace(remote, allow_remote_faults=True)
    assert check_settings(allowed, probe_port=False) == []
    local = Settings(fault_injection=True, allow_remote_faults=True)
    [pointless] = check_settings(local, probe_port=False)
    assert (pointless.severity, pointless.setting) == (Severity.WARNING, "allow_remote_faults")


def test_listening_beyond_loopback_without_keys_is_a_warning() -> None:
    problems = check_settings(Settings(host="0.0.0.0"), probe_port=False)
    assert [(p.severity, p.setting) for p in problems] == [(Severity.WARNING, "api_keys")]
    assert is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")


def test_a_model_directory_is_validated_and_a_hub_id_only_noted(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    problems = check_settings(Settings(model=str(tmp_path / "empty")), probe_port=False)
    assert [p.message.split(": ", 1)[1] for p in problems] == [
        "config.json is missing",
        "no weights (model*.safetensors)",
        "no tokenizer (tokenizer.json or tokenizer.model)",
    ]
    complete = tmp_path / "complete"
    complete.mkdir()
    write(complete / "config.json", '{"model_type": "llama"}')
    write(complete / "tokenizer.json", "{}")
    (complete / "model.safetensors").write_bytes(b"")
    assert check_settings(Settings(model=str(complete)), probe_port=False) == []
    hub = check_settings(Settings(model="mlx-community/some-model"), probe_port=False)
    assert [(p.severity, p.setting) for p in hub] == [(Severity.WARNING, "model")]


def test_model_size_with_a_model_and_a_file_as_cache_dir_are_reported(tmp_path: Path) -> None:
    not_a_dir = write(tmp_path / "file", "")
    settings = Settings(model="owner/name", model_size="small", cache_dir=not_a_dir)
    problems = check_settings(settings, probe_port=False)
    assert {p.setting for p in problems} == {"model", "model_size", "cache_dir"}
    assert messages(problems, "cache_dir") == [f"{not_a_dir!r} is not a directory"]


def test_dependency_versions_are_compared_numerically() -> None:
    assert version_tuple("0.29.1rc1") == (0, 29, 1)
    assert version_tuple("0.100") > version_tuple("0.29")
    assert version_tuple("unknown") == ()


def test_an_unreadable_value_hides_the_checks_of_the_value_it_fell_back_to(
    tmp_path: Path, listening: int
) -> None:
    path = write(tmp_path / "t.toml", f"port = {listening}\n")
    _, problems = load_and_check(parse_flags("--port", "x"), {}, path)
    assert messages(problems, "port") == ["--port must be an integer, got 'x'"]


# -- troupe check-config, as a subprocess ---------------------------------------


def test_check_config_lists_all_four_problems_and_exits_2(tmp_path: Path, free_port: int) -> None:
    path = write(tmp_path / "t.toml", "prot = 9000\nmemory_low_water = 0.9\nchat_timeout = -1\n")
    missing = str(tmp_path / "no-model")
    result = check_config("--config", path, "--port", str(free_port), "--model", missing)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 4, result.stderr
    assert "4 problems" in result.stderr
    for fragment in ("did you mean 'port'?", "memory_low_water", "chat_timeout", "no-model"):
        assert any(fragment in line for line in lines), fragment


def test_check_config_says_ok_and_exits_0(free_port: int) -> None:
    result = check_config("--port", str(free_port))
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "configuration OK", "")


def test_ray_settings_need_ray_and_ray_takes_them(free_port: int) -> None:
    alone = check_config(
        *("--port", str(free_port), "--replicas", "2", "--ray-address", "auto"),
        *("--replica-routing", "pow2"),
    )
    assert alone.returncode == 2
    for name in ("replicas", "ray_address", "replica_routing"):
        assert f"{name}: needs ray (--ray)" in alone.stderr
    zero = check_config("--port", str(free_port), "--ray", "--replicas", "0")
    assert zero.returncode == 2 and "replicas: must be at least 1, got 0" in zero.stderr
    # The dev install has the ray extra; without it, --ray names the extra to install.
    ok = check_config("--port", str(free_port), "--ray", "--replicas", "2")
    assert (ok.returncode, ok.stdout.strip()) == (0, "configuration OK")


def test_check_config_shows_warnings_and_still_exits_0(free_port: int) -> None:
    result = check_config(env={"TROUPE_PORT": str(free_port), "TROUPE_PROT": "1"})
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "configuration OK",
        "warning  unknown setting TROUPE_PROT in the environment; did you mean TROUPE_PORT?",
    ]


def test_check_config_bad_input_is_never_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path / "t.toml", "[[[ not toml\n")
    result = check_config("--config", path, "--port", "abc", "--memory-low-water", "half")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert "line 1" in result.stderr
    assert "--port must be an integer, got 'abc'" in result.stderr


def test_check_config_never_prints_a_secret(tmp_path: Path, listening: int) -> None:
    path = write(tmp_path / "t.toml", f'admin_key = "{SECRET}"\napi_keys = "{SECRET}"\n')
    env = {"TROUPE_API_KEYS": f"{SECRET},{SECRET}", "TROUPE_ADMIN_KEY": SECRET}
    args = ["--config", path, "--port", str(listening), "--host", "0.0.0.0"]
    result = check_config(*args, env=env)
    assert result.returncode == 2
    assert "'api_keys' in" in result.stderr  # the file's api_keys is not a list
    assert "admin_key: is also one of the api_keys" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_a_split_model_needs_the_engine_process_and_one_model(free_port: int) -> None:
    port = ("--port", str(free_port))
    thread = check_config(*port, "--shards", "2", "--engine", "thread")
    assert thread.returncode == 2 and 'shards: needs engine = "process"' in thread.stderr
    zero = check_config(*port, "--shards", "0")
    assert zero.returncode == 2 and "shards: must be at least 1, got 0" in zero.stderr
    ray = check_config(*port, "--shards", "2", "--ray")
    assert ray.returncode == 2 and "shards: cannot be used with ray yet" in ray.stderr
    ok = check_config(*port, "--shards", "2")
    assert (ok.returncode, ok.stdout.strip()) == (0, "configuration OK")


def test_hosts_of_a_split_model_are_addresses_one_per_rank(free_port: int) -> None:
    port = ("--port", str(free_port))
    wrong = check_config(*port, "--shards", "2", "--shard-hosts", "10.0.0.1,db,10.0.0.3")
    assert wrong.returncode == 2
    assert "shard_hosts: names 3 hosts for 2 shards" in wrong.stderr
    assert "shard_hosts: 'db' is not an IP address" in wrong.stderr
    alone = check_config(*port, "--shard-hosts", "10.0.0.1")
    assert alone.returncode == 2 and "shard_hosts: needs shards" in alone.stderr
    ok = check_config(*port, "--shards", "2", "--shard-hosts", "10.0.0.1,10.0.0.2")
    assert (ok.returncode, ok.stdout.strip()) == (0, "configuration OK")


def test_check_config_reports_every_tenants_file_mistake_without_a_key(
    free_port: int, tmp_path: Path
) -> None:
    secret = "sk-tenant-secret-1"
    cases = {
        "is not valid TOML": "[tenants.a\n",
        "tenants.a.keys[0] is already a key of tenants.b": (
            f'[tenants.b]\nkeys = ["{secret}"]\n[tenants.a]\nkeys = ["{secret}"]\n'
        ),
        "tenants.'key-mine' must be": f'[tenants.key-mine]\nkeys = ["{secret}"]\n',
        "Object contains unknown field `colour`": f'[tenants.a]\nkeys = ["{secret}"]\ncolour = 2\n',
        "Expected `float` <= 1000.0 - at `tenants.a.weight`": (
            f'[tenants.a]\nkeys = ["{secret}"]\nweight = 5000\n'
        ),
        "Expected `array` of length >= 1": "[tenants.a]\nkeys = []\n",
        "admin_key: is also a key of the tenants file": f'[tenants.a]\nkeys = ["{secret}"]\n',
    }
    for index, (expected, text) in enumerate(cases.items()):
        path = tmp_path / f"tenants-{index}.toml"
        path.write_text(text)
        result = check_config(
            "--port", str(free_port), "--tenants", str(path), "--admin-key", secret
        )
        assert result.returncode == 2, (expected, result.stdout)
        assert expected in result.stderr, (expected, result.stderr)
        assert secret not in result.stdout + result.stderr
    good = tmp_path / "good.toml"
    good.write_text(f'[tenants.research]\nkeys = ["{secret}", "sk-2"]\n')
    ok = check_config("--port", str(free_port), "--tenants", str(good))
    assert (ok.returncode, ok.stdout.strip()) == (0, "configuration OK")
