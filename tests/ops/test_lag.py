from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from services.router.app import create_app as create_router
from services.router.settings import Settings as RouterSettings
from shared import Metrics, create_topics
from shared._lag import LagCollector, WatchedGroup, lag_of, watched_groups

from ..support import eventually, produce, running, settings_for


def test_lag_counts_from_the_committed_offset_or_the_first_one():
    a, b, c = TopicPartition("t", 0), TopicPartition("t", 1), TopicPartition("t", 2)
    lag = lag_of({a: 4, b: -1}, first={a: 0, b: 3, c: 2}, end={a: 10, b: 7, c: 2})
    assert lag == {a: 6, b: 4, c: 0}


def test_a_watched_group_reads_its_topics_or_its_pattern():
    named = WatchedGroup("g", topics=("notify.email",))
    assert named.reads("notify.email") and not named.reads("notify.email.critical")
    pattern = WatchedGroup("r", pattern=r"ns\.domain\..*")
    assert pattern.reads("ns.domain.booking") and not pattern.reads("ns.notify.email")


async def test_collector_measures_committed_and_end_offsets_on_the_broker(infra, namespace):
    topic = f"{namespace}lagged"
    group = f"{namespace}lag-group"
    settings = settings_for(RouterSettings, infra, namespace)
    await create_topics(settings, [topic])
    for i in range(5):
        await produce(infra.kafka_bootstrap, topic, {"n": i}, key=b"same-key")
    committer = AIOKafkaConsumer(bootstrap_servers=infra.kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await committer.start()
    try:
        partitions = committer.partitions_for_topic(topic) or set()
        filled = [tp for tp, end in (await committer.end_offsets([TopicPartition(topic, p) for p in partitions])).items() if end == 5]
        assert len(filled) == 1
        committer.assign(filled)
        await committer.commit({filled[0]: OffsetAndMetadata(2, "")})
    finally:
        await committer.stop()
    metrics = Metrics(CollectorRegistry())
    collector = LagCollector(infra.kafka_bootstrap, [WatchedGroup(group, topics=(topic,))], metrics)
    try:
        lag = await collector.collect()
    finally:
        await collector.close()
    assert lag[(group, topic, filled[0].partition)] == 3
    assert sum(lag.values()) == 3 and len(lag) == 3
    sample = metrics.registry.get_sample_value("herald_consumer_lag", {"group": group, "topic": topic, "partition": str(filled[0].partition)})
    assert sample == 3


async def test_a_running_service_reports_the_lag_of_its_own_groups(infra, namespace):
    settings = settings_for(RouterSettings, infra, namespace, consumer_lag_interval_seconds=0.3)
    await create_topics(settings)
    app = create_router(settings)
    assert sorted(watched_groups(app.state.resources.broker), key=lambda g: g.group) == [
        WatchedGroup(settings.group_id("router"), pattern=settings.domain_pattern()),
        WatchedGroup(settings.group_id("router-erasure"), topics=(settings.erasure_topic,)),
        WatchedGroup(settings.group_id("router-erasure-status"), topics=(settings.erasure_status_topic,)),
        WatchedGroup(settings.group_id("router-status"), topics=(settings.status_topic,)),
    ]
    async with running(app) as client:

        async def lag_lines() -> list[str]:
            text = (await client.get("/metrics/")).text
            return [line for line in text.splitlines() if line.startswith("herald_consumer_lag{") and settings.area_topic("booking") in line]

        lines = await eventually(lag_lines, timeout=30, what="consumer lag of the router's group")
        assert all(f'group="{settings.group_id("router")}"' in line for line in lines)
        assert len(lines) == settings.kafka_partitions


async def test_an_unreachable_broker_is_logged_and_the_service_goes_on(caplog):
    from faststream.kafka import KafkaBroker, KafkaRouter

    from herald.infra import free_port
    from shared._lag import consumer_lag

    router = KafkaRouter()
    router.subscriber("notify.email", group_id="herald-email")(lambda m: None)
    nowhere = f"127.0.0.1:{free_port()}"
    broker = KafkaBroker(nowhere)
    broker.include_router(router)
    metrics = Metrics(CollectorRegistry())
    async with consumer_lag(nowhere, broker, metrics, interval=0.1) as collector:
        assert collector is not None and collector.groups == [WatchedGroup("herald-email", topics=("notify.email",))]

        async def warned():
            return [r for r in caplog.records if "consumer lag not measured" in r.getMessage()]

        await eventually(warned, timeout=30, what="a warning about the unreachable broker")
    assert collector._admin is None and collector._offsets is None


async def test_no_collector_runs_when_turned_off_or_without_groups():
    from faststream.kafka import KafkaBroker

    from shared._lag import consumer_lag

    metrics = Metrics(CollectorRegistry())
    async with consumer_lag("127.0.0.1:1", KafkaBroker("127.0.0.1:1"), metrics, interval=5) as collector:
        assert collector is None
