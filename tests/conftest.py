"""Root test configuration: fixtures live in ``tests/support`` as pytest plugins."""

pytest_plugins = [
    "tests.support.kafka_fixtures",
    "tests.support.log_fixtures",
]
