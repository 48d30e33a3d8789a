"""Topics are created configured for their role (retention, cleanup policy, in-sync replicas), and `herald topics`
brings existing ones back to it: against the embedded broker (which stores and reports a topic's configuration but
cannot change it) and, for the change itself, against a scripted admin client."""

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared import HeraldSettings, create_topics
from shared._kafka import TopicConfigError, configure_topics, kafka_options, reconfigure_topics, topic_config, topic_roles

from ..support import new_namespace, settings_for


async def described(settings: HeraldSettings, topics: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        answers = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        await admin.close()
    return {name: {e[0]: e[1] for e in entries} for answer in answers for _, _, _, name, entries in answer.resources}


async def test_each_topic_is_created_with_its_roles_retention_and_an_unchanged_one_needs_no_change(infra):
    settings = settings_for(HeraldSettings, infra, new_namespace(), retry_tiers="5", topic_retention_hours="domain=24,notify=48,retry=12,status=6,dlq=240,erasure=480,erasure_status=480")
    await create_topics(settings)
    roles = topic_roles(settings)
    one_of_each = {role: next(t for t, r in roles.items() if r == role) for role in set(roles.values())}
    found = await described(settings, list(one_of_each.values()))
    hours = {"domain": 24, "notify": 48, "retry": 12, "status": 6, "dlq": 240, "erasure": 480, "erasure_status": 480}
    for role, topic in one_of_each.items():
        assert found[topic]["retention.ms"] == str(hours[role] * 3_600_000), topic
        assert found[topic]["cleanup.policy"] == "delete"
    assert await reconfigure_topics(settings) == []  # as configured: nothing to change


async def test_a_changed_retention_on_a_broker_that_cannot_alter_configs_is_refused_naming_the_topics(infra):
    namespace = new_namespace()
    await create_topics(settings_for(HeraldSettings, infra, namespace, retry_tiers="5"))
    longer = settings_for(HeraldSettings, infra, namespace, retry_tiers="5", topic_retention_hours="domain=168,notify=168,retry=168,status=72,dlq=1000,erasure=720,erasure_status=720")
    with pytest.raises(TopicConfigError, match=r"no AlterConfigs.*these differ: " + namespace.replace(".", r"\.") + r"dlq$"):
        await reconfigure_topics(longer)


class ScriptedAdmin:
    """Answers DescribeConfigs from ``current`` and records AlterConfigs (the embedded broker has no AlterConfigs)."""

    def __init__(self, current: dict[str, dict[str, str]]) -> None:
        self.current = current
        self.altered: list[tuple[str, dict[str, str]]] = []

    async def describe_configs(self, resources):
        return [SimpleNamespace(resources=[(0, None, 2, r.name, [self.entry(k, v) for k, v in self.current[r.name].items()]) for r in resources])]

    @staticmethod
    def entry(name: str, value):
        """A DescribeConfigs v1 entry: a bare value is the built-in default (source 5); (value, source, sensitive) as given."""
        value, source, sensitive = value if isinstance(value, tuple) else (value, 5, False)
        return (name, value, False, source, sensitive, [])

    async def alter_configs(self, resources):
        self.altered += [(r.name, dict(r.configs)) for r in resources]
        return [SimpleNamespace(resources=[(0, None, 2, r.name) for r in resources])]


def test_only_topics_whose_configuration_differs_are_altered_to_their_roles_whole_configuration():
    settings = HeraldSettings(environment="test", kafka_min_insync_replicas=2)
    roles = topic_roles(settings)
    dlq, status = settings.dlq_topic, settings.status_topic
    admin = ScriptedAdmin({dlq: {**topic_config(settings, "dlq"), "retention.ms": "1"}, status: topic_config(settings, "status")})
    changed = asyncio.run(configure_topics(admin, settings, [dlq, status], roles))
    assert changed == [dlq]
    assert admin.altered == [(dlq, {"cleanup.policy": "delete", "retention.ms": str(720 * 3_600_000), "min.insync.replicas": "2"})]


def test_altering_a_topic_keeps_what_an_operator_set_on_it():
    settings = HeraldSettings(environment="test")
    dlq = settings.dlq_topic
    operator_set = {"max.message.bytes": ("2097152", 1, False), "segment.ms": ("3600000", 1, False)}
    elsewhere = {"compression.type": ("zstd", 4, False), "sasl.secret": (None, 1, True)}  # a broker's static value; a sensitive one
    admin = ScriptedAdmin({dlq: {**topic_config(settings, "dlq"), "retention.ms": ("1", 1, False), **operator_set, **elsewhere}})
    assert asyncio.run(configure_topics(admin, settings, [dlq], topic_roles(settings))) == [dlq]
    [(_, altered)] = admin.altered
    assert altered == {"max.message.bytes": "2097152", "segment.ms": "3600000", **topic_config(settings, "dlq")}


def test_the_retention_table_must_name_every_role_and_keep_retries_past_their_longest_wait():
    with pytest.raises(ValueError, match="no retention for"):
        HeraldSettings(environment="test", topic_retention_hours="dlq=1")
    with pytest.raises(ValueError, match="would delete retries before they are due"):
        HeraldSettings(environment="test", topic_retention_hours="domain=1,notify=1,retry=1,status=1,dlq=1,erasure=1,erasure_status=1")
