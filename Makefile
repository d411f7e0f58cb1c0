# Entry points. On a fresh machine:
#   make            build everything and the plugin package (installs what is missing)
#   make package    only the package: _build/plugin/emqx_offline_cassandra-<vsn>.tar.gz
#   make test       run every test against a real local Cassandra (CI runs exactly this)
#   make unit       the tests that need no Cassandra (Rust unit tests, config EUnit, config files)
#   make lint       rustfmt and clippy
#   make cassandra  start the local Cassandra (root/public, keyspace mqtt, table mqtt_msg)
#   make bench      benchmarks against the local Cassandra, with their baselines
.PHONY: all build package test unit lint cassandra cassandra-stop bench fmt clean

all: build

build:
	scripts/build.sh $(if $(WITH_CASSANDRA),--start-cassandra)

package:
	scripts/package.sh

test:
	scripts/test.sh

unit:
	scripts/test.sh unit

lint:
	scripts/test.sh lint

cassandra:
	test/cassandra/cassandra.sh start

cassandra-stop:
	test/cassandra/cassandra.sh stop

bench:
	scripts/bench.sh

fmt:
	cargo fmt --all

clean:
	cargo clean
