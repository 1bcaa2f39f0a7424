# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Two installs, one stamp each: the demo needs only the core package (ONNX Runtime), the
# tests every extra (torch, LiteRT, Ansible). The full install is a superset, so it also stamps the
# core one: `make demo` after `make test` installs nothing, `make test` after `make demo`
# adds the extras.
CORE_STAMP := $(VENV)/.installed-core
FULL_STAMP := $(VENV)/.installed-full

.PHONY: demo test bench venv sshd browser clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# An editable install leaves the checkout without bytecode, and where PYTHONDONTWRITEBYTECODE is
# set every run compiled edgekit's modules again: compile them once, as `pip install` does.
$(CORE_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	$(PY) -m compileall -q edgekit >/dev/null
	touch $@

$(FULL_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,tflite,lm,ansible]'
	$(PY) -m compileall -q edgekit >/dev/null
	touch $@ $(CORE_STAMP)

venv: $(FULL_STAMP)

# The tests start real OpenSSH servers on 127.0.0.1: install sshd when it is missing.
sshd:
	@if [ ! -x /usr/sbin/sshd ]; then \
		echo "installing openssh-server (needed by the SSH tests)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null; \
	fi

# The HTML report tests render pages in headless Chromium: install Debian's when it is missing
# (without apt or root, those tests are skipped and say why).
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "installing chromium (needed by the HTML report tests)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "could not install chromium: the tests that render HTML in it will be skipped"; \
	fi

# Two pytest workers, one test file each at a time (a file's fixtures are built once): most
# tests wait on device processes and sshd, so two keep two cores busy. The slowest tests are listed.
TEST_WORKERS ?= 2
test: $(FULL_STAMP) sshd browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20

demo: $(CORE_STAMP)
	$(VENV)/bin/edgekit demo

bench: $(FULL_STAMP) sshd
	$(PY) benchmarks/quantize_vs_ort.py
	$(PY) benchmarks/push_vs_scp.py
	$(PY) benchmarks/fleet_scale.py
	$(PY) benchmarks/lm_vs_genai.py

clean:
	rm -rf $(VENV) out dist demo-work bench-results
