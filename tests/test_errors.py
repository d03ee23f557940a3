"""Failure descriptions never carry exception text, paths or secrets."""

from __future__ import annotations

import pytest

from runtime import ActorDied, ChildSpec, ExitActor, MailboxConfig, SupervisorSpec, describe_failure
from tests.support import SECRET, Probe

pytestmark = pytest.mark.timeout(10)


def fail_with(exc: BaseException) -> None:
    raise exc


def raise_it(exc: BaseException) -> BaseException:
    try:
        fail_with(exc)
    except BaseException as caught:
        return caught
    raise AssertionError("unreachable")


def test_foreign_exceptions_keep_only_type_and_origin() -> None:
    described = describe_failure(raise_it(ValueError(SECRET)))
    assert described.startswith("ValueError (in tests.test_errors.fail_with:")
    assert SECRET not in described
    assert "/" not in described


def test_runtime_errors_keep_their_safe_message() -> None:
    described = describe_failure(ActorDied("gen", "RuntimeError"))
    assert described == "actor 'gen' died before answering: RuntimeError"


def test_descriptions_are_one_bounded_line() -> None:
    long = ActorDied("x" * 500, "line one\nline two")
    described = describe_failure(long)
    assert "\n" not in described
    assert len(described) <= 200


def test_exit_actor_takes_only_otp_normal_reasons() -> None:
    assert ExitActor().reason == "normal"
    with pytest.raises(ValueError, match="exit reason"):
        ExitActor("kill")


@pytest.mark.parametrize("bad", ["", "a/b", "tab\there"])
def test_ids_are_validated(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid id"):
        ChildSpec(bad, lambda: Probe("x", None))  # type: ignore[arg-type]


def test_duplicate_child_ids_are_refused() -> None:
    spec = ChildSpec("a", lambda: Probe("a", None))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicate child ids"):
        SupervisorSpec("root", [spec, spec])


@pytest.mark.parametrize(
    "options", [{"capacity": 0}, {"block_timeout": -1.0}], ids=["capacity", "block_timeout"]
)
def test_mailbox_config_is_validated(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"capacity|block_timeout"):
        MailboxConfig(**options)  # type: ignore[arg-type]
