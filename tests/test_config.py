"""Tests of the settings registry: layering, parsing, errors and the reference file."""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import pytest

from goverse import config
from goverse.config import SETTINGS, Duration, Setting, Settings, build_arg_parser
from goverse.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_FILE = ROOT / "etc" / "goverse-node.yaml"


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "node.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def load(argv: list[str] | None = None, environ: dict | None = None) -> Settings:
    """Load with an explicit environment so the caller's GOVERSE_* never leak in."""
    return Settings.load(argv, environ or {})


@pytest.fixture
def bool_setting(monkeypatch: pytest.MonkeyPatch) -> Setting:
    """A boolean setting registered for one test (the registry declares none)."""
    setting = Setting("trace_calls", bool, False, "Log every call.", section="Test")
    monkeypatch.setitem(SETTINGS, setting.name, setting)
    return setting


# -- defaults and the registry -----------------------------------------------


def test_defaults_match_declarations() -> None:
    settings = load()

    assert settings.listen == "127.0.0.1:7070"
    assert settings.advertise == ""
    assert settings.etcd_endpoints == ()
    assert settings.etcd_prefix == "/goverse"
    assert settings.etcd_timeout == 5.0
    assert settings.num_shards == 8192
    assert settings.lease_ttl == 3
    assert settings.stability_window == 1.0
    assert settings.call_timeout == 30.0
    assert settings.max_message_bytes == 4 * 1024 * 1024
    assert settings.log_level == "INFO"
    assert settings.source("listen") == "default"


def test_defaults_equal_from_empty_mapping() -> None:
    assert load() == Settings.from_mapping({})


def test_registry_derives_flags_and_env_names() -> None:
    setting = SETTINGS["etcd_ca_cert"]

    assert setting.flag == "--etcd-ca-cert"
    assert setting.env == "GOVERSE_ETCD_CA_CERT"
    assert list(SETTINGS)[:3] == ["listen", "advertise", "etcd_endpoints"]


def test_settings_are_read_only() -> None:
    settings = load()

    with pytest.raises(AttributeError, match="read-only"):
        settings.listen = "0.0.0.0:1"
    with pytest.raises(AttributeError, match="no setting named 'nope'"):
        settings.nope


def test_replace_returns_changed_copy() -> None:
    settings = load()

    changed = settings.replace(num_shards=16, etcd_endpoints=["a:1"])

    assert (changed.num_shards, changed.etcd_endpoints) == (16, ("a:1",))
    assert settings.num_shards == 8192
    assert changed.source("num_shards") == "replace()"


def test_as_dict_gives_plain_lists() -> None:
    values = Settings.from_mapping({"objects": ["app.rooms"]}).as_dict()

    assert values["objects"] == ["app.rooms"]
    assert list(values) == list(SETTINGS)


# -- precedence --------------------------------------------------------------


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path, "num_shards: 16\nlease_ttl: 5\ncall_timeout: 2.5\nlog_level: ERROR\n"
    )
    environ = {"GOVERSE_LEASE_TTL": "7", "GOVERSE_CALL_TIMEOUT": "4"}

    settings = load(["--config", path, "--call-timeout", "9"], environ)

    assert settings.num_shards == 16
    assert settings.lease_ttl == 7
    assert settings.call_timeout == 9.0
    assert settings.log_level == "ERROR"
    assert settings.source("num_shards") == "config file %s" % path
    assert settings.source("lease_ttl") == "environment variable GOVERSE_LEASE_TTL"
    assert settings.source("call_timeout") == "flag --call-timeout"


def test_program_defaults_lose_to_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "num_shards: 16\n")

    settings = Settings.load(
        ["--config", path], {}, defaults={"num_shards": 32, "server_workers": 8}
    )

    assert (settings.num_shards, settings.server_workers) == (16, 8)


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOVERSE_ETCD_PREFIX", "/from-os")

    assert Settings.load().etcd_prefix == "/from-os"


def test_empty_file_is_an_empty_mapping(tmp_path: Path) -> None:
    assert load(["--config", write_yaml(tmp_path, "")]) == load()


# -- parsing -----------------------------------------------------------------


def test_list_from_env_is_comma_separated() -> None:
    settings = load(environ={"GOVERSE_ETCD_ENDPOINTS": " a:2379, b:2379 ,,"})

    assert settings.etcd_endpoints == ("a:2379", "b:2379")


def test_a_list_of_only_commas_is_an_error_not_an_empty_list() -> None:
    with pytest.raises(ConfigError, match="GOVERSE_ETCD_ENDPOINTS.*no items"):
        load(environ={"GOVERSE_ETCD_ENDPOINTS": ",,,"})


def test_list_from_flag_is_comma_separated() -> None:
    settings = load(["--objects", "app.rooms,app.users"])

    assert settings.objects == ("app.rooms", "app.users")


def test_list_from_yaml_list(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "etcd_endpoints:\n  - a:1\n  - '[::1]:2'\n")

    assert load(["--config", path]).etcd_endpoints == ("a:1", "[::1]:2")


def test_empty_env_list_clears_the_file_value(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "objects: [app.rooms]\n")

    settings = load(["--config", path], {"GOVERSE_OBJECTS": ""})

    assert settings.objects == ()


@pytest.mark.parametrize(
    "text, seconds",
    [("1.5", 1.5), ("250ms", 0.25), ("3s", 3.0), ("2m", 120.0), ("1h", 3600.0)],
)
def test_duration_units(text: str, seconds: float) -> None:
    assert load(environ={"GOVERSE_CALL_TIMEOUT": text}).call_timeout == seconds


def test_log_level_is_case_insensitive() -> None:
    assert load(["--log-level", "warning"]).log_level == "WARNING"


def test_bool_flags(bool_setting: Setting) -> None:
    assert load().trace_calls is False
    assert load(["--trace-calls"]).trace_calls is True

    settings = load(["--no-trace-calls"], {"GOVERSE_TRACE_CALLS": "yes"})

    assert settings.trace_calls is False
    assert settings.source("trace_calls") == "flag --no-trace-calls"


def test_bool_from_env_and_yaml(bool_setting: Setting, tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "trace_calls: true\n")

    assert load(["--config", path]).trace_calls is True
    assert load(environ={"GOVERSE_TRACE_CALLS": "off"}).trace_calls is False


def test_bool_flag_in_help(bool_setting: Setting) -> None:
    text = build_arg_parser("goverse-node").format_help()

    assert "--trace-calls, --no-trace-calls" in text


def test_help_shows_registry_help_and_defaults() -> None:
    text = " ".join(build_arg_parser("goverse-node").format_help().split())

    assert "--num-shards INT" in text
    assert "(default: 8192; env GOVERSE_NUM_SHARDS)" in text
    assert "--etcd-timeout SECONDS" in text


# -- errors ------------------------------------------------------------------


def assert_config_error(excinfo: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(excinfo.value)
    for part in parts:
        assert part in message, "%r not in %r" % (part, message)


def test_bad_type_from_env_names_setting_source_value() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load(environ={"GOVERSE_NUM_SHARDS": "many"})

    assert_config_error(
        excinfo, "num_shards", "environment variable GOVERSE_NUM_SHARDS", "'many'",
        "expected an integer",
    )


def test_bad_type_from_file_names_setting_source_value(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "lease_ttl: [3]\n")

    with pytest.raises(ConfigError) as excinfo:
        load(["--config", path])

    assert_config_error(excinfo, "lease_ttl", "config file %s" % path, "[3]")


def test_bad_type_from_flag_names_setting_source_value() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load(["--stability-window", "soon"])

    assert_config_error(
        excinfo, "stability_window", "flag --stability-window", "'soon'"
    )


def test_yaml_number_for_a_string_setting_is_rejected(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "etcd_user: 1234\n")

    with pytest.raises(ConfigError) as excinfo:
        load(["--config", path])

    assert_config_error(excinfo, "etcd_user", "1234", "expected a string")


@pytest.mark.parametrize(
    "name, raw, reason",
    [
        ("num_shards", "0", "between 1 and 1000000"),
        ("lease_ttl", "1", "between 2 and 3600"),
        ("lease_ttl", "100000000000", "between 2 and 3600"),
        ("max_message_bytes", "2147483648", "between 1024 and 2147483647"),
        ("call_timeout", "0", "greater than 0"),
        ("listen", "localhost", "expected host:port"),
        ("listen", "host:70000", "between 0 and 65535"),
        ("advertise", "host:0", "between 1 and 65535"),
        ("etcd_prefix", "/goverse/", 'not end with "/"'),
        ("etcd_prefix", "goverse", 'start with "/"'),
        ("etcd_endpoints", "a:1,http://b:2", "expected host:port"),
        ("objects", "app.rooms,app-users", "not a Python module name"),
        ("log_level", "TRACE", "one of DEBUG, INFO, WARNING, ERROR"),
        ("max_message_bytes", "512", "between 1024 and 2147483647"),
        ("etcd_timeout", "inf", "expected seconds"),
    ],
)
def test_failed_validator_names_setting_source_value(
    name: str, raw: str, reason: str
) -> None:
    env = SETTINGS[name].env

    with pytest.raises(ConfigError) as excinfo:
        load(environ={env: raw})

    assert_config_error(excinfo, name, "environment variable %s" % env, repr(raw), reason)


def test_an_integer_too_large_for_a_number_names_setting_and_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "call_timeout: %s\n" % ("9" * 400))

    with pytest.raises(ConfigError) as excinfo:
        load(["--config", path])

    assert_config_error(excinfo, "call_timeout", "config file %s" % path,
                        "expected a finite number", "(400 characters)")
    assert len(str(excinfo.value)) < 300


def test_a_number_too_long_to_read_names_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "call_timeout: %s\n" % ("9" * 5000))

    with pytest.raises(ConfigError, match="config file %s" % path):
        load(["--config", path])


@pytest.mark.parametrize("raw", [float("nan"), float("inf"), -float("inf"), "1e308h",
                                 "1e307m", 10 ** 400],
                         ids=["nan", "inf", "-inf", "1e308h", "1e307m", "400-digit-int"])
def test_durations_must_be_finite(raw: object) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_mapping({"call_timeout": raw})

    assert_config_error(excinfo, "call_timeout", "from_mapping()")


def test_a_duration_with_a_unit_overflowing_from_env_is_refused() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load(environ={"GOVERSE_SHUTDOWN_GRACE": "1e307h"})

    assert_config_error(excinfo, "shutdown_grace", "GOVERSE_SHUTDOWN_GRACE", "'1e307h'")


def test_failed_validator_from_mapping_names_source() -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_mapping({"server_workers": 4})

    assert_config_error(excinfo, "server_workers", "from_mapping()", "4", "at least 8")


def test_a_bad_file_value_fails_even_when_overridden(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "num_shards: -1\n")

    with pytest.raises(ConfigError, match="num_shards"):
        load(["--config", path, "--num-shards", "16"])


def test_unknown_yaml_key_suggests_the_setting(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "num_shard: 16\n")

    with pytest.raises(ConfigError) as excinfo:
        load(["--config", path])

    assert_config_error(
        excinfo, "unknown setting 'num_shard'", "config file %s" % path, "16",
        "did you mean 'num_shards'?",
    )


def test_unknown_dashed_yaml_key_suggests_the_setting(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "etcd-endpoints: [a:1]\n")

    with pytest.raises(ConfigError, match="did you mean 'etcd_endpoints'"):
        load(["--config", path])


def test_unknown_key_without_a_close_match(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "zzzz: 1\n")

    with pytest.raises(ConfigError) as excinfo:
        load(["--config", path])

    assert "did you mean" not in str(excinfo.value)
    assert_config_error(excinfo, "'zzzz'", path)


def test_unknown_goverse_variable_is_a_warning_with_a_suggestion(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="goverse.config"):
        settings = load(environ={"GOVERSE_CALL_TIMEOUTS": "3", "GOVERSE_QQQ": "1",
                                 "GOVERSE_VENV": "/opt/venv", "OTHER_THING": "1"})

    assert settings.call_timeout == 30.0
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == 2, warned
    assert "GOVERSE_CALL_TIMEOUTS" in warned[0] and "GOVERSE_CALL_TIMEOUT?" in warned[0]
    assert "GOVERSE_QQQ" in warned[1] and "did you mean" not in warned[1]


def test_every_goverse_variable_the_repository_reads_is_known() -> None:
    """A tool's own GOVERSE_* variable must be listed, or loading settings warns."""
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    # Names that are not variables: a constant of the fuzz suite.
    not_variables = {"GOVERSE_ERROR_KINDS"}
    known = {setting.env for setting in SETTINGS.values()} | config.OTHER_VARIABLES
    unknown = {}
    for name in files:
        path = ROOT / name
        if name == "tests/test_config.py" or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for variable in re.findall(r"GOVERSE_[A-Z][A-Z0-9_]*", text):
            if variable not in known and variable not in not_variables:
                unknown.setdefault(variable, name)
    assert unknown == {}


def test_unknown_key_in_mapping() -> None:
    with pytest.raises(ConfigError, match="did you mean 'call_timeout'"):
        Settings.from_mapping({"call_timeot": 1})


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just text\n", "str")])
def test_yaml_that_is_not_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = write_yaml(tmp_path, text)

    with pytest.raises(ConfigError) as excinfo:
        load(["--config", path])

    assert_config_error(excinfo, "config file %s" % path, "holds a %s" % kind)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "listen: [unclosed\n")

    with pytest.raises(ConfigError) as excinfo:
        load(["--config", path])

    assert_config_error(excinfo, "config file %s" % path, "not valid YAML")


def test_unreadable_file(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.yaml")

    with pytest.raises(ConfigError) as excinfo:
        load(["--config", path])

    assert_config_error(excinfo, "cannot read config file %s" % path)


def test_unknown_flag_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as excinfo:
        load(["--num-shard", "3"])

    assert excinfo.value.code == 2
    assert "--num-shard" in capsys.readouterr().err


# -- cross-checks ------------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:7070", "[::]:7070"])
def test_unreachable_listen_needs_advertise(listen: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load(["--listen", listen])

    assert_config_error(excinfo, "advertise", repr(listen), "flag --listen")
    assert load(["--listen", listen, "--advertise", "10.0.0.5:7070"]).listen == listen


def test_cert_and_key_go_together() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load(environ={"GOVERSE_ETCD_CERT": "/tls/node.pem"})

    assert_config_error(
        excinfo, "etcd_cert", "etcd_key", "'/tls/node.pem'",
        "environment variable GOVERSE_ETCD_CERT",
    )


def test_tls_ca_alone_is_an_error_not_plaintext() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load(environ={"GOVERSE_TLS_CA": "/tls/ca.pem"})

    assert_config_error(excinfo, "tls_ca", "'/tls/ca.pem'",
                        "environment variable GOVERSE_TLS_CA", "tls_cert")


def test_replace_runs_the_cross_checks() -> None:
    with pytest.raises(ConfigError, match="advertise"):
        load().replace(listen="0.0.0.0:7070")


# -- secrets -----------------------------------------------------------------


def test_repr_hides_the_password() -> None:
    settings = Settings.from_mapping({"etcd_user": "root", "etcd_password": "hunter2"})

    text = repr(settings)

    assert settings.etcd_password == "hunter2"
    assert "hunter2" not in text
    assert "etcd_password='***'" not in text
    assert "etcd_password=***" in text
    assert "etcd_user='root'" in text


def test_errors_hide_the_password() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load(environ={"GOVERSE_ETCD_PASSWORD": "hunter2"})

    assert "hunter2" not in str(excinfo.value)
    assert_config_error(excinfo, "etcd_user", "etcd_password", "GOVERSE_ETCD_PASSWORD")


# -- reference file ----------------------------------------------------------


def test_reference_file_is_up_to_date() -> None:
    expected = config.render_yaml_reference()

    assert REFERENCE_FILE.read_text(encoding="utf-8") == expected, (
        "regenerate it: python -m goverse.config > etc/goverse-node.yaml"
    )


def test_reference_file_loads_back_to_the_defaults() -> None:
    assert load(["--config", str(REFERENCE_FILE)]) == load()


def test_reference_documents_every_setting() -> None:
    text = config.render_yaml_reference()

    for setting in SETTINGS.values():
        assert "\n%s:" % setting.name in text
        assert setting.env in text
    assert "# Seconds a stopping node lets in-flight calls finish." in text


def test_duration_marker_is_a_registered_type() -> None:
    assert SETTINGS["shutdown_grace"].type is Duration
    with pytest.raises(TypeError, match="unsupported type"):
        Setting("bad", dict, {}, "A mapping.")


def test_listen_port_zero_needs_no_advertise() -> None:
    # The node advertises the port it was actually given.
    settings = load(["--listen", "127.0.0.1:0"])
    assert (settings.listen, settings.advertise) == ("127.0.0.1:0", "")
