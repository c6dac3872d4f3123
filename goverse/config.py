"""The settings registry: every knob a goverse node reads, declared once.

Each :class:`Setting` carries its name, type, default, help text and
validator. The YAML file, the ``GOVERSE_*`` environment variables and the
launcher's flags are all derived from the registry, so a new setting needs
one declaration and then shows up in every place a value can come from, in
``--help`` and in the reference file ``etc/goverse-node.yaml``.

Values are layered, later layers winning::

    registry defaults < program defaults < YAML file < environment < flags

Every value is parsed and validated as it arrives, so a
:class:`~goverse.errors.ConfigError` names the setting, the place the value
came from and the value itself.

Run ``python -m goverse.config`` to print the annotated YAML reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import math
import os
import sys
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from goverse.errors import ConfigError

__all__ = [
    "Duration",
    "SETTINGS",
    "Setting",
    "Settings",
    "build_arg_parser",
    "render_yaml_reference",
]

#: A validator takes a parsed value and returns it, possibly normalised, or
#: raises ValueError with a message that says what the value must be.
Validator = Callable[[Any], Any]

log = logging.getLogger(__name__)

_HIDDEN = "***"

#: Longest value shown in a message; longer ones are cut, with their length.
_SHOWN_MAX = 60


class Duration:
    """Marker type of a setting that holds a duration in seconds, as a float.

    Text values may carry a unit (``250ms``, ``5s``, ``2m``, ``1h``); a bare
    number means seconds.
    """


@dataclass(frozen=True)
class Setting:
    """One declared setting; ``flag`` and ``env`` are derived from ``name``."""

    name: str
    type: type
    default: Any
    help: str
    validator: Validator | None = None
    flag: str | None = None
    env: str | None = None
    secret: bool = False
    section: str = ""

    def __post_init__(self) -> None:
        if self.type not in _KINDS:
            raise TypeError(
                "setting %s has unsupported type %r" % (self.name, self.type)
            )
        if self.flag is None:
            object.__setattr__(self, "flag", "--" + self.name.replace("_", "-"))
        if self.env is None:
            object.__setattr__(self, "env", "GOVERSE_" + self.name.upper())

    def show(self, value: Any) -> str:
        """The value as it may appear in messages: secrets are masked."""
        if self.secret and value:
            return _HIDDEN
        try:
            shown = repr(value)
        except ValueError:  # an integer beyond sys.get_int_max_str_digits()
            return "an integer of %d bits" % value.bit_length()
        if len(shown) > _SHOWN_MAX:
            shown = "%s... (%d characters)" % (shown[:_SHOWN_MAX], len(shown))
        return shown


# -- parsing text (environment and flags) ------------------------------------

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})

# NOTE: "ms" must be tried before "s" and "m", which are its suffix and prefix.
_DURATION_UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))


def _text_to_str(text: str) -> str:
    return text


def _text_to_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("expected an integer") from None


def _text_to_float(text: str) -> float:
    try:
        return _finite(float(text.strip()))
    except ValueError:
        raise ValueError("expected a finite number") from None


def _text_to_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError("expected true or false (or yes/no, on/off, 1/0)")


def _text_to_list(text: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(","))
    kept = tuple(item for item in items if item)
    if text.strip() and not kept:
        # Commas and nothing else: most likely a variable filled wrongly,
        # which must not pass for "none" (no etcd endpoints starts an
        # embedded etcd, say).
        raise ValueError("a comma-separated list with no items in it")
    return kept


def _text_to_duration(text: str) -> float:
    word = text.strip().lower()
    try:
        for suffix, scale in _DURATION_UNITS:
            if word.endswith(suffix):
                # A unit can turn a large finite number into infinity.
                return _finite(_text_to_float(word[: -len(suffix)]) * scale)
        return _text_to_float(word)
    except ValueError:
        raise ValueError(
            "expected seconds, optionally with a unit: 250ms, 5s, 2m, 1h"
        ) from None


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


# -- parsing data (YAML file and Python mappings) ----------------------------


def _type_name(value: Any) -> str:
    return type(value).__name__


def _data_to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError("expected a string, got %s (quote it in YAML)" % _type_name(value))


def _data_to_int(value: Any) -> int:
    if isinstance(value, str):
        return _text_to_int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError("expected an integer, got %s" % _type_name(value))


def _data_to_float(value: Any) -> float:
    if isinstance(value, str):
        return _text_to_float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return _finite(float(value))
        except OverflowError:
            raise ValueError("expected a finite number, got an integer of %d bits"
                             % value.bit_length()) from None
    raise ValueError("expected a number, got %s" % _type_name(value))


def _data_to_bool(value: Any) -> bool:
    if isinstance(value, str):
        return _text_to_bool(value)
    if isinstance(value, bool):
        return value
    raise ValueError("expected true or false, got %s" % _type_name(value))


def _data_to_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return _text_to_list(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError("expected a list of strings")


def _data_to_duration(value: Any) -> float:
    if isinstance(value, str):
        return _text_to_duration(value)
    return _data_to_float(value)


@dataclass(frozen=True)
class _Kind:
    """How values of one setting type are parsed and shown."""

    metavar: str
    from_text: Callable[[str], Any]
    from_data: Callable[[Any], Any]


_KINDS: dict[type, _Kind] = {
    str: _Kind("TEXT", _text_to_str, _data_to_str),
    int: _Kind("INT", _text_to_int, _data_to_int),
    float: _Kind("NUMBER", _text_to_float, _data_to_float),
    bool: _Kind("", _text_to_bool, _data_to_bool),
    list: _Kind("A,B,...", _text_to_list, _data_to_list),
    Duration: _Kind("SECONDS", _text_to_duration, _data_to_duration),
}


# -- validators --------------------------------------------------------------


def between(low: float, high: float) -> Validator:
    """Accept numbers from ``low`` to ``high`` inclusive."""

    def check(value: Any) -> Any:
        if not low <= value <= high:
            raise ValueError("must be between %s and %s" % (low, high))
        return value

    return check


def at_least(low: float) -> Validator:
    """Accept numbers no smaller than ``low``."""

    def check(value: Any) -> Any:
        if value < low:
            raise ValueError("must be at least %s" % low)
        return value

    return check


def positive(value: Any) -> Any:
    """Accept numbers greater than zero."""
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def one_of(*choices: str) -> Validator:
    """Accept one of ``choices``, in any letter case, returned as declared."""
    by_upper = {choice.upper(): choice for choice in choices}

    def check(value: str) -> str:
        try:
            return by_upper[value.upper()]
        except KeyError:
            raise ValueError("must be one of %s" % ", ".join(choices)) from None

    return check


def split_host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 hosts in brackets); raise ValueError if malformed."""
    host, colon, port = value.rpartition(":")
    if not colon or not host or not (port.isascii() and port.isdigit()):
        raise ValueError("expected host:port")
    bracketed = host.startswith("[") and host.endswith("]")
    if (":" in host and not bracketed) or any(c.isspace() for c in host):
        raise ValueError("expected host:port, IPv6 hosts in brackets: [::1]:7070")
    if int(port) > 65535:
        raise ValueError("port must be between 0 and 65535")
    return host, int(port)


def host_port(*, allow_port_zero: bool = False) -> Validator:
    """Accept ``host:port``; port 0 (any free port) only when allowed."""

    def check(value: str) -> str:
        _, port = split_host_port(value)
        if port == 0 and not allow_port_zero:
            raise ValueError("port must be between 1 and 65535")
        return value

    return check


def optional(validator: Validator) -> Validator:
    """Accept the empty value (meaning "off" or "derived"), else defer."""

    def check(value: Any) -> Any:
        return validator(value) if value else value

    return check


def each(validator: Validator) -> Validator:
    """Apply ``validator`` to every item of a list."""

    def check(values: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(validator(value) for value in values)

    return check


def key_prefix(value: str) -> str:
    """Accept an etcd key prefix such as ``/goverse``."""
    if not value.startswith("/") or value.endswith("/"):
        raise ValueError('must start with "/" and not end with "/"')
    return value


def module_name(value: str) -> str:
    """Accept a dotted Python module name."""
    if not all(part.isidentifier() for part in value.split(".")):
        raise ValueError("%r is not a Python module name" % value)
    return value


_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]"})


# -- the registry ------------------------------------------------------------

#: Every setting, in declaration order.
SETTINGS: dict[str, Setting] = {}


def _parse(setting: Setting, raw: Any, source: str, *, text: bool) -> Any:
    """Parse and validate one raw value, naming its source if it is bad."""
    kind = _KINDS[setting.type]
    try:
        value = kind.from_text(raw) if text else kind.from_data(raw)
        if setting.validator is not None:
            value = setting.validator(value)
    except ValueError as exc:
        raise ConfigError(
            "%s: invalid value %s from %s: %s"
            % (setting.name, setting.show(raw), source, exc)
        ) from exc
    return value


def _declare(section: str, *settings: Setting) -> None:
    """Add ``settings`` to the registry under a section title."""
    for setting in settings:
        if setting.name in SETTINGS or setting.name == "config":
            raise ValueError("setting %s is declared twice" % setting.name)
        default = _parse(setting, setting.default, "its declaration", text=False)
        SETTINGS[setting.name] = dataclasses.replace(
            setting, default=default, section=section
        )


_declare(
    "Node",
    Setting(
        "listen", str, "127.0.0.1:7070",
        "host:port the node's gRPC server binds. Loopback by default; binding "
        "all interfaces needs an explicit 0.0.0.0. Port 0 picks a free port.",
        host_port(allow_port_zero=True),
    ),
    Setting(
        "advertise", str, "",
        "host:port other nodes use to reach this node. Empty means the listen "
        "address (with the port actually bound when listen asks for port 0); "
        "it must be set when listen is 0.0.0.0.",
        optional(host_port()),
    ),
)

_declare(
    "etcd",
    Setting(
        "etcd_endpoints", list, (),
        "etcd host:port endpoints. Empty starts an embedded etcd server.",
        each(host_port()),
    ),
    Setting(
        "etcd_prefix", str, "/goverse",
        'Key prefix of this cluster in etcd. Starts with "/" and does not end '
        'with "/"; clusters sharing an etcd need different prefixes.',
        key_prefix,
    ),
    Setting(
        "etcd_timeout", Duration, 5.0,
        "Seconds to wait for an answer from etcd.",
        positive,
    ),
    Setting("etcd_user", str, "", "etcd user name; empty disables authentication."),
    Setting(
        "etcd_password", str, "",
        "Password of etcd_user. Prefer the environment over a file for it.",
        secret=True,
    ),
    Setting("etcd_ca_cert", str, "", "Path of the CA certificate that signed etcd's."),
    Setting("etcd_cert", str, "", "Path of the client certificate; needs etcd_key."),
    Setting("etcd_key", str, "", "Path of the client certificate's private key."),
)

_declare(
    "Embedded etcd",
    Setting(
        "embedded_etcd_port", int, 2379,
        "Client port of the embedded etcd server.",
        between(1, 65535),
    ),
    Setting(
        "embedded_etcd_data_dir", str, "",
        "Data directory of the embedded etcd server. Empty means a temporary "
        "directory, removed at exit.",
    ),
)

_declare(
    "Cluster",
    Setting(
        "num_shards", int, 8192,
        "Number of shards objects are spread over. Every node of a cluster "
        "must use the same value.",
        between(1, 1_000_000),
    ),
    Setting(
        "lease_ttl", int, 3,
        "Seconds a node's etcd lease lives without renewal; the shards of a "
        "killed node move after this. At most 3600: the objects of a dead "
        "node stay unreachable this long, so an hour is already past any use, "
        "and far larger values (etcd refuses TTLs over 9,000,000,000 s) would "
        "only fail later, at etcd.",
        between(2, 3600),
    ),
    Setting(
        "stability_window", Duration, 1.0,
        "Seconds membership must stay unchanged before the cluster counts as "
        "ready and before shards are rebalanced.",
        at_least(0),
    ),
    Setting(
        "peer_check_interval", Duration, 1.0,
        "Seconds between a node's checks that it reaches each peer; a peer "
        "that answered anything in that time is not asked again. 0 turns the "
        "checks and the reports below off.",
        at_least(0),
    ),
    Setting(
        "suspect_after", Duration, 3.0,
        "Seconds a peer must stay unreachable before this node reports it in "
        "etcd. A node that at least two peers, and most of them, report loses "
        "its shards to the others until the reports clear.",
        at_least(0),
    ),
)

_declare(
    "Objects and calls",
    Setting(
        "objects", list, (),
        "Python modules to import; they define and register object classes.",
        each(module_name),
    ),
    Setting(
        "call_timeout", Duration, 30.0,
        "Default deadline in seconds of a call, create or delete.",
        positive,
    ),
    Setting(
        "shutdown_grace", Duration, 10.0,
        "Seconds a stopping node lets in-flight calls finish.",
        at_least(0),
    ),
)

_declare(
    "Peers and transport",
    Setting(
        "peer_batch_size", int, 64,
        "Largest number of queued requests to one peer sent together.",
        between(1, 4096),
    ),
    Setting(
        "peer_max_inflight", int, 4096,
        "Requests in flight to one peer before new ones fail as overloaded.",
        at_least(1),
    ),
    Setting(
        "max_message_bytes", int, 4 * 1024 * 1024,
        "Largest gRPC message in bytes a node sends or accepts; at most "
        "2147483647, the largest gRPC takes.",
        between(1024, 2**31 - 1),
    ),
    Setting(
        "server_workers", int, 256,
        "Greenlets serving gRPC handlers.",
        at_least(8),
    ),
)

_declare(
    "TLS",
    Setting(
        "tls_cert", str, "",
        "Path of this process's certificate (PEM) for its gRPC server and for "
        "its connections to other nodes. Empty: plaintext gRPC.",
    ),
    Setting("tls_key", str, "", "Path of the private key of tls_cert."),
    Setting(
        "tls_ca", str, "",
        "Path of the CA certificate that signs every node's certificate. "
        "Peers must present a certificate it signed (mutual TLS). Needs "
        "tls_cert and tls_key: alone it is an error, not plaintext.",
    ),
    Setting(
        "tls_client_auth", bool, True,
        "Require callers of this process's gRPC server to present a certificate "
        "signed by tls_ca. Nodes keep it on; a gate serving outside clients "
        "may turn it off.",
    ),
)

_declare(
    "Operations",
    Setting(
        "admin_listen", str, "",
        "host:port of the embedded admin HTTP endpoints. Empty turns them off.",
        optional(host_port(allow_port_zero=True)),
    ),
    Setting(
        "log_level", str, "INFO",
        "Logging threshold: DEBUG, INFO, WARNING or ERROR.",
        one_of("DEBUG", "INFO", "WARNING", "ERROR"),
    ),
)

def url_prefix(value: str) -> str:
    """Accept a URL path prefix such as ``/chat/`` (outside the API's ``/api/``)."""
    if not value.startswith("/") or not value.endswith("/") or len(value) < 3:
        raise ValueError('must start and end with "/" and name a directory, e.g. "/chat/"')
    if value.startswith("/api/"):
        raise ValueError('must not be under "/api/", where the gate serves its API')
    return value


_declare(
    "Gate",
    Setting(
        "http_listen", str, "127.0.0.1:8080",
        "host:port of a gate's HTTP API (calls, creates, deletes and the "
        "Server-Sent Events stream). Empty turns it off. Nodes ignore it.",
        optional(host_port(allow_port_zero=True)),
    ),
    Setting(
        "client_buffer", int, 1000,
        "Push messages a gate holds for one client that reads slowly; past "
        "that, new ones for the client are dropped and counted.",
        at_least(1),
    ),
    Setting(
        "sse_heartbeat", Duration, 30.0,
        "Seconds between heartbeat comments on an idle Server-Sent Events "
        "stream, so proxies keep it open and dead clients are noticed.",
        positive,
    ),
    Setting(
        "http_static_dir", str, "",
        "Directory of static files a gate serves over HTTP beside its API "
        "(a browser app then shares the API's origin). Empty serves none.",
    ),
    Setting(
        "http_static_prefix", str, "/static/",
        "URL path under which http_static_dir is served.",
        url_prefix,
    ),
)


# -- sources -----------------------------------------------------------------

#: Values of one source: setting name -> (parsed value, source description).
_Layer = dict[str, tuple[Any, str]]


def _suggestion(key: Any) -> Setting | None:
    matches = difflib.get_close_matches(
        str(key).replace("-", "_").lower(), SETTINGS, n=1
    )
    return SETTINGS[matches[0]] if matches else None


def _unknown_key(key: Any, raw: Any, source: str) -> ConfigError:
    near = _suggestion(key)
    shown = near.show(raw) if near is not None else repr(raw)
    message = "unknown setting %r (value %s) in %s" % (key, shown, source)
    if near is not None:
        message += "; did you mean %r?" % near.name
    return ConfigError(message)


def _layer_from_data(values: Mapping[Any, Any], source: str) -> _Layer:
    """Parse a mapping of setting names to YAML-like values."""
    layer: _Layer = {}
    for key, raw in values.items():
        setting = SETTINGS.get(key) if isinstance(key, str) else None
        if setting is None:
            raise _unknown_key(key, raw, source)
        layer[setting.name] = (_parse(setting, raw, source, text=False), source)
    return layer


def _layer_from_environ(environ: Mapping[str, str]) -> _Layer:
    """Parse the ``GOVERSE_*`` variables that name a setting; warn about the others."""
    layer: _Layer = {}
    for setting in SETTINGS.values():
        if setting.env in environ:
            source = "environment variable %s" % setting.env
            value = _parse(setting, environ[setting.env], source, text=True)
            layer[setting.name] = (value, source)
    _warn_unknown_variables(environ)
    return layer


#: ``GOVERSE_*`` variables that are not settings: read by the scripts in
#: bin/, by etc/gunicorn.conf.py and by the test and benchmark suites.
OTHER_VARIABLES = frozenset({
    "GOVERSE_VENV",
    "GOVERSE_ADMIN_BIND", "GOVERSE_ADMIN_WORKERS", "GOVERSE_ADMIN_ACCESS_LOG",
    "GOVERSE_ADMIN_CONTROL_SOCKET",
    "GOVERSE_TEST_FAULTS", "GOVERSE_TEST_ACTIVATION_LOG", "GOVERSE_TEST_OUTPUT",
    "GOVERSE_FAULT_TRIALS", "GOVERSE_FAULT_GATE", "GOVERSE_KILL_CYCLES",
    "GOVERSE_KILL_SEED", "GOVERSE_FUZZ_EXAMPLES",
})


def _warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """A misspelled variable is ignored, so say so, as an unknown YAML key would."""
    known = {setting.env for setting in SETTINGS.values()} | OTHER_VARIABLES
    for name in sorted(environ):
        if not name.startswith("GOVERSE_") or name in known:
            continue
        near = _suggestion(name[len("GOVERSE_"):])
        log.warning("environment variable %s is not a goverse setting and is ignored%s",
                    name, "; did you mean %s?" % near.env if near is not None else "")


def _layer_from_flags(namespace: argparse.Namespace) -> _Layer:
    """Parse the flags that were given; absent flags are not in ``namespace``."""
    layer: _Layer = {}
    for setting in SETTINGS.values():
        if not hasattr(namespace, setting.name):
            continue
        raw = getattr(namespace, setting.name)

        # Boolean flags arrive parsed by argparse; the rest arrive as text.
        is_bool = setting.type is bool
        flag = "--no-" + setting.flag[2:] if is_bool and not raw else setting.flag
        source = "flag %s" % flag
        value = _parse(setting, raw, source, text=not is_bool)
        layer[setting.name] = (value, source)
    return layer


def _read_config_file(path: str) -> Mapping[Any, Any]:
    """Load a YAML file that maps setting names to values."""
    source = "config file %s" % path
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except OSError as exc:
        raise ConfigError("cannot read %s: %s" % (source, exc.strerror or exc)) from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError("%s is not valid YAML: %s" % (source, exc)) from exc
    except ValueError as exc:
        # A number longer than Python converts from text (int_max_str_digits).
        raise ConfigError("%s holds a value goverse cannot read: %s" % (source, exc)) from exc

    # An empty file is an empty mapping.
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            "%s must map setting names to values, but holds a %s: %.60r"
            % (source, _type_name(data), data)
        )
    return data


# -- the settings object -----------------------------------------------------


class Settings:
    """A validated, read-only set of values, one per registered setting.

    Read a value as an attribute (``settings.listen``). Build instances with
    :meth:`load` (the launcher) or :meth:`from_mapping` (tests, embedding);
    derive changed copies with :meth:`replace`.
    """

    __slots__ = ("_values", "_sources")

    def __init__(self, values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_sources", dict(sources))

    @classmethod
    def load(
        cls,
        argv: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        prog: str = "goverse-node",
        defaults: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Layer program defaults, the ``--config`` file, environment and flags.

        ``argv`` excludes the program name; None means no flags. ``environ``
        None means ``os.environ``. ``defaults`` replaces registry defaults
        for this program. Malformed or unknown flags end the process with
        argparse's usage message, as a command line should.
        """
        namespace = build_arg_parser(prog).parse_args(list(argv or ()))
        layers = [_layer_from_data(defaults or {}, "defaults given to load()")]

        if namespace.config is not None:
            data = _read_config_file(namespace.config)
            layers.append(_layer_from_data(data, "config file %s" % namespace.config))

        layers.append(_layer_from_environ(os.environ if environ is None else environ))
        layers.append(_layer_from_flags(namespace))
        return cls._from_layers(layers)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Registry defaults overridden by ``values`` (YAML-like), validated."""
        return cls._from_layers([_layer_from_data(values, "from_mapping()")])

    @classmethod
    def _from_layers(
        cls, layers: Iterable[_Layer], base: Settings | None = None
    ) -> Settings:
        if base is None:
            values = {name: s.default for name, s in SETTINGS.items()}
            sources = dict.fromkeys(SETTINGS, "default")
        else:
            values, sources = dict(base._values), dict(base._sources)

        for layer in layers:
            for name, (value, source) in layer.items():
                values[name] = value
                sources[name] = source

        settings = cls(values, sources)
        settings.validate_together()
        return settings

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (YAML-like values) applied and validated."""
        return self._from_layers([_layer_from_data(changes, "replace()")], base=self)

    def validate_together(self) -> None:
        """Check the rules that involve more than one setting."""
        self._check_advertise()
        self._check_pair("etcd_cert", "etcd_key")
        self._check_pair("etcd_user", "etcd_password")
        self._check_pair("tls_cert", "tls_key")
        self._check_tls_ca()

    def _check_advertise(self) -> None:
        if self.advertise:
            return
        # Port 0 is fine: the node advertises the port it was given.
        host, _port = split_host_port(self.listen)
        if host in _WILDCARD_HOSTS:
            raise ConfigError(
                "advertise: must be set because listen %r (from %s) is not an "
                "address other nodes can reach; give the host:port they should use"
                % (self.listen, self._sources["listen"])
            )

    def _check_tls_ca(self) -> None:
        if self._values["tls_cert"] and not self._values["tls_ca"]:
            raise ConfigError(
                "tls_ca must be set when tls_cert is (from %s): nodes check each "
                "other's certificates against it" % (self._sources["tls_cert"],))
        # TLS is on only with a certificate of this process's own: a CA alone
        # would leave gRPC in plaintext while looking configured.
        if self._values["tls_ca"] and not self._values["tls_cert"]:
            raise ConfigError(
                "tls_ca is %s (from %s) but tls_cert and tls_key are empty: nodes and "
                "gates serve TLS only with a certificate of their own, so set both "
                "(or leave tls_ca empty for plaintext)" % (
                    self._show("tls_ca"), self._sources["tls_ca"]))

    def _check_pair(self, first: str, second: str) -> None:
        given = [name for name in (first, second) if self._values[name]]
        if len(given) != 1:
            return
        name = given[0]
        missing = second if name == first else first
        raise ConfigError(
            "%s and %s must be given together: %s is %s (from %s) but %s is empty"
            % (first, second, name, self._show(name), self._sources[name], missing)
        )

    def source(self, name: str) -> str:
        """Where the value of setting ``name`` came from, e.g. ``flag --listen``."""
        return self._sources[name]

    def as_dict(self) -> dict[str, Any]:
        """Plain values by name, lists as lists, secrets included."""
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in self._values.items()
        }

    def _show(self, name: str) -> str:
        return SETTINGS[name].show(self._values[name])

    def __getattr__(self, name: str) -> Any:
        # Only reached when ordinary lookup fails, i.e. for setting names.
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError("no setting named %r" % name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("settings are read-only; use replace(%s=...)" % name)

    def __delattr__(self, name: str) -> None:
        raise AttributeError("settings are read-only")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(SETTINGS))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Settings):
            return NotImplemented
        return self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        fields = ", ".join("%s=%s" % (name, self._show(name)) for name in self._values)
        return "Settings(%s)" % fields


# -- command line ------------------------------------------------------------


def _default_text(setting: Setting) -> str:
    value = setting.default
    if setting.type is list:
        return ",".join(value) or "none"
    if setting.type is bool:
        return "on" if value else "off"
    return str(value) if value != "" else '""'


def _add_flag(group: argparse._ArgumentGroup, setting: Setting) -> None:
    help_text = "%s (default: %s; env %s)" % (
        setting.help, _default_text(setting), setting.env
    )
    options: dict[str, Any] = {
        "dest": setting.name,
        "default": argparse.SUPPRESS,
        "help": help_text.replace("%", "%%"),
    }
    if setting.type is bool:
        options["action"] = argparse.BooleanOptionalAction
    else:
        options["metavar"] = _KINDS[setting.type].metavar
    group.add_argument(setting.flag, **options)


def build_arg_parser(prog: str) -> argparse.ArgumentParser:
    """A parser with ``--config`` and one flag per registered setting.

    Flags that are not given are absent from the parsed namespace, so they
    do not override the file or the environment.
    """
    # NOTE: no abbreviations: a new setting could make an abbreviated flag in
    # someone's launcher script ambiguous or silently change its meaning.
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Run a %s. Flags override GOVERSE_* environment variables, "
        "which override the --config file." % (
            "goverse gate" if prog.endswith("gate") else "goverse node"),
    )
    parser.add_argument(
        "--config", metavar="PATH", default=None,
        help="YAML file of settings; etc/goverse-node.yaml lists them all",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for setting in SETTINGS.values():
        if setting.section not in groups:
            groups[setting.section] = parser.add_argument_group(setting.section)
        _add_flag(groups[setting.section], setting)
    return parser


# -- reference file ----------------------------------------------------------

_REFERENCE_HEADER = """\
# goverse node settings: every setting with its default.
#
# Generated by `python -m goverse.config`; do not edit by hand.
# Each setting can also be given as a GOVERSE_<NAME> environment variable or
# a --<name> flag; flags override the environment, which overrides this file.
# Lists are YAML lists here and comma-separated in variables and flags.
# Durations are seconds; text values may carry a unit: 250ms, 5s, 2m, 1h.
"""


def _yaml_line(setting: Setting) -> str:
    value = list(setting.default) if setting.type is list else setting.default
    return yaml.safe_dump({setting.name: value}, default_flow_style=False).rstrip("\n")


def _reference_entry(setting: Setting) -> list[str]:
    lines = textwrap.wrap(setting.help, width=76)
    lines.append("env %s, flag %s" % (setting.env, setting.flag))
    return ["# " + line for line in lines] + [_yaml_line(setting)]


def render_yaml_reference() -> str:
    """The annotated YAML file of every setting at its default."""
    lines = [_REFERENCE_HEADER.rstrip("\n")]
    section = None
    for setting in SETTINGS.values():
        if setting.section != section:
            section = setting.section
            lines += ["", "", "# -- %s %s" % (section, "-" * (72 - len(section)))]
        lines += [""] + _reference_entry(setting)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_yaml_reference())
