# `make test` is the project's one test command (README quickstart, .ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test deps venv build cargo-test pytest run bench image

test: deps build cargo-test pytest

# Debian packages the tests drive as real clients and engines, installed in one apt-get run
# (one index update instead of one per package): skopeo and podman (clients; runc because
# podman's default runtime, crun, cannot start containers in this sandbox; binutils' strip for
# image/install-app.sh), chromium (the dashboard test), postgresql and nginx-light (the scaled
# root's tests: engines the fixtures start on loopback), golang-go (a Go-made gzip layer, as docker
# makes them, for tests/test_delta_gzip.py).
TEST_PACKAGES := skopeo:skopeo podman:podman runc:runc strip:binutils chromium:chromium \
	nginx:nginx-light go:golang-go
deps:
	@missing=""; for pair in $(TEST_PACKAGES); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || test -x "/usr/sbin/$${pair%%:*}" \
	    || missing="$$missing $${pair#*:}"; \
	done; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; (apt-get update -qq || true) \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	@# dockerd for docker's own login/refresh flow (tests/test_auth_hardening.py); that one test
	@# skips, saying why, where the package cannot be installed.
	@command -v dockerd >/dev/null 2>&1 || { \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io \
	  || echo "docker.io not installed: the real-docker test will skip"; }

venv: $(PY)
$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Builds the Rust extension in release mode and installs connreg + test extras into the venv.
build: venv
	$(PY) -m pip install -q maturin
	$(PY) -m pip install -q -e '.[test]'

cargo-test:
	@# --profile release, not --release: the latter builds dependencies under the bench profile,
	@# so the S3 store's tree (tokio, reqwest, object_store) would compile a second time (~4.5 min).
	cargo test --profile release --quiet

pytest:
	$(PY) -m pytest -q $(PYTEST_ARGS)

run: build
	$(VENV)/bin/connreg serve --data-dir ./data --listen 127.0.0.1:5000

bench: build
	$(PY) bench/run.py

# The container image connreg:latest, built without a container registry (image/build.sh,
# docs/container.md). PODMAN: podman with its global flags; vfs works everywhere (overlay may
# not, nested in a container); on a machine whose podman store is overlay already:
# `make image PODMAN=podman`.
PODMAN ?= podman --storage-driver vfs
image: deps build
	PODMAN="$(PODMAN)" PYTHON=$(PY) image/build.sh
