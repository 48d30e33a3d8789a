"""Service keys: scopes, hashed keys, rotation, source binding, and what production refuses."""

from __future__ import annotations

import secrets

import pytest
from pydantic import ValidationError

from shared import HeraldSettings, Scope, hash_service_key, parse_service_keys
from shared._keys import find_service_key

from ..support import production


def test_an_entry_names_its_scopes_and_holds_the_key_or_its_hash():
    plain, other = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    keys = parse_service_keys(f"shop:publish={plain}, crm:recipients+traces={hash_service_key(other)}")
    shop, crm = keys
    assert (shop.name, shop.scopes, shop.hashed) == ("shop", {Scope.publish}, False)
    assert (crm.name, crm.scopes, crm.hashed) == ("crm", {Scope.recipients, Scope.traces}, True)
    assert find_service_key(keys, plain) is shop and find_service_key(keys, other) is crm
    assert find_service_key(keys, hash_service_key(other)) is None  # the stored hash is not itself a key
    assert find_service_key(keys, plain[:-1]) is None
    assert shop.allows(Scope.publish) and not shop.allows(Scope.traces)
    assert plain not in repr(keys) and hash_service_key(other) not in repr(keys)  # never printed by accident


def test_admin_holds_every_scope_and_two_keys_of_one_name_are_both_valid_while_rotating():
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    keys = parse_service_keys(f"ops:admin={old},ops:admin={hash_service_key(new)}")
    assert all(k.allows(scope) for k in keys for scope in Scope)
    assert find_service_key(keys, old).name == find_service_key(keys, new).name == "ops"


def test_a_key_may_be_bound_to_the_sources_it_publishes():
    keys = parse_service_keys("shop:publish=k1,crm:publish=k2", "shop=/shop https://shop.example.com")
    shop, crm = keys
    assert shop.may_publish_from("/shop") and shop.may_publish_from("https://shop.example.com")
    assert not shop.may_publish_from("/crm") and crm.may_publish_from("/anything")
    with pytest.raises(ValueError, match="HERALD_API_KEY_SOURCES names billing"):
        parse_service_keys("shop:publish=k1", "billing=/billing")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("shop", "not of the form name:scope"),
        ("shop:publish=", "not of the form name:scope"),
        ("shop:write=k", "scopes are publish, recipients, traces, admin"),
        ("shop:=k", "scopes are"),
        ("shop:publish=sha256:abc", "64 hexadecimal digits"),
        ("sh op:publish=k", "a name is"),
    ],
)
def test_a_malformed_entry_is_refused_in_every_environment_naming_it(raw, why):
    with pytest.raises(ValidationError, match=why):
        HeraldSettings(environment="development", api_keys=raw)


def test_production_refuses_a_key_without_scopes_or_too_short():
    key = secrets.token_urlsafe(32)
    with pytest.raises(ValidationError, match="entry 'shop' has no scopes"):
        HeraldSettings(**production(api_keys=f"shop={key}"))
    with pytest.raises(ValidationError, match="entry 'shop' is shorter than 32"):
        HeraldSettings(**production(api_keys="shop:publish=abcdefghij"))
    with pytest.raises(ValidationError, match="64 hexadecimal digits.*HERALD_JWT_SECRET"):  # listed with the rest
        HeraldSettings(**production(api_keys="shop:publish=sha256:REPLACE_ME", jwt_secret="REPLACE_ME"))
    assert HeraldSettings(**production(api_keys=f"shop:publish={hash_service_key(key)}")).service_keys[0].hashed
    assert HeraldSettings(environment="test", api_keys=f"shop={key}").service_keys[0].scopes == set(Scope)  # outside production: every scope


def test_the_cli_makes_a_key_with_both_entries_and_hashes_one_from_stdin(capsys, monkeypatch):
    import io

    from herald.cli import main

    assert main(["service-key", "new", "crm", "--scopes", "recipients+traces"]) == 0
    out = capsys.readouterr().out.splitlines()
    key, sending, verifying = out[0].split()[1], out[1].split()[2], out[2].split()[2]
    [plain], [hashed] = parse_service_keys(sending), parse_service_keys(verifying)
    assert plain.matches(key) and hashed.matches(key) and hashed.hashed and hashed.scopes == {Scope.recipients, Scope.traces}
    monkeypatch.setattr("sys.stdin", io.StringIO(key + "\n"))
    assert main(["service-key", "hash"]) == 0
    assert capsys.readouterr().out.strip() == hash_service_key(key)
    assert main(["service-key", "new", "crm", "--scopes", "write"]) == 1


def test_an_operator_action_is_audited_with_who_ran_it(capfd):
    from herald.cli import audited, operator

    audited("dlq.replay", "email", reason="http_503", count=3)
    line = next(line for line in capfd.readouterr().err.splitlines() if "audit:" in line)
    assert f"audit: dlq.replay by {operator()} on email" in line and operator().startswith("cli:")
