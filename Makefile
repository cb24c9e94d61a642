PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROTO_OUT := proto

.PHONY: install proto proto-check test test-fast bench bench-smoke run lint image-coordinator image-client compose-up compose-down clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# torch first, pinned: it resolves to the CPU wheel on disk instead of a CUDA build.
install: $(PY)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev]'

proto:
	$(PY) -m grpc_tools.protoc -I proto --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) proto/seedfed/v1/coordinator.proto

# Fails when the committed generated code differs from a fresh generation.
proto-check:
	@tmp=$$(mktemp -d) && $(PY) -m grpc_tools.protoc -I proto --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp proto/seedfed/v1/coordinator.proto \
	  && for f in coordinator_pb2.py coordinator_pb2.pyi coordinator_pb2_grpc.py; do \
	       diff -u proto/seedfed/v1/$$f $$tmp/seedfed/v1/$$f || { echo "proto/seedfed/v1/$$f is stale: run make proto"; exit 1; }; done \
	  && echo "generated protocol code is up to date"

test: install proto-check
	$(VENV)/bin/pytest -q

test-fast:
	$(VENV)/bin/pytest -q -m "not slow"

run: install
	$(VENV)/bin/seedfed simulate

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The engine, coordinator and catch-up benchmarks at full size (minutes; the coordinator's needs PostgreSQL).
bench:
	$(PY) bench/replay.py
	$(PY) bench/probe.py
	$(PY) bench/coordinator_load.py
	$(PY) bench/catchup.py

# Every benchmark at its --smoke size (seconds each), as the test suite runs them.
bench-smoke:
	$(VENV)/bin/pytest -q tests/bench

image-coordinator:
	docker build -f docker/coordinator.Dockerfile -t seedfed-coordinator .

image-client:
	docker build -f docker/client.Dockerfile -t seedfed-client .

compose-up:
	docker compose -f docker/compose.yaml up --build

compose-down:
	docker compose -f docker/compose.yaml down -v

clean:
	rm -rf build dist *.egg-info .pytest_cache
