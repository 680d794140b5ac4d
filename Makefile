# kiln — build bootable Kubernetes appliances.
# `make help` lists the targets. Go module versions are pinned in go.mod (the
# one source of truth); the Kubernetes version stamped into the binaries is
# read from it.

SHELL := /bin/bash
GO ?= go
# The node binary goes into an initramfs with no libc: build everything
# static. One setting for build, vet and test keeps one warm build cache.
export CGO_ENABLED := 0
KUBE_VERSION := $(shell $(GO) list -m -f '{{.Version}}' k8s.io/kubernetes 2>/dev/null)
KUBE_MINOR := $(word 2,$(subst ., ,$(KUBE_VERSION)))
# Without these, upstream code reports v0.0.0-master.
KUBE_LDFLAGS := -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
	-X k8s.io/component-base/version.gitMajor=1 \
	-X k8s.io/component-base/version.gitMinor=$(KUBE_MINOR) \
	-X k8s.io/component-base/version.gitTreeState=clean \
	-X k8s.io/client-go/pkg/version.gitVersion=$(KUBE_VERSION) \
	-X k8s.io/client-go/pkg/version.gitMajor=1 \
	-X k8s.io/client-go/pkg/version.gitMinor=$(KUBE_MINOR)
# containerd and runc report their own versions (kubelet shows containerd's
# as the node's runtime); without these they say "+unknown" and nothing.
CONTAINERD_VERSION := $(shell $(GO) list -m -f '{{.Version}}' github.com/containerd/containerd/v2 2>/dev/null)
RUNC_VERSION := $(shell $(GO) list -m -f '{{.Version}}' github.com/opencontainers/runc 2>/dev/null)
# -s -w strip only at link time, so the compile cache is shared with
# `go test` and `go vet` (no -trimpath for the same reason).
LDFLAGS := -s -w $(KUBE_LDFLAGS) -X github.com/containerd/containerd/v2/version.Version=$(CONTAINERD_VERSION:v%=%)

DATA ?= /tmp/kiln-host
CLUSTER ?= out/cluster

.PHONY: help build test test-unit test-host test-vm test-ha vet up gen clean bench cluster cluster-down cluster-status image run deps
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  make %-12s %s\n", $$1, $$2}'

build: bin/kiln bin/kiln-node bin/kiln-init bin/kubectl pods ## build bin/kiln (host CLI), bin/kiln-node (node binary), bin/kiln-init (the initramfs' stage 1), bin/kubectl and the worker stack's programs

# Go decides what is stale; these always ask it (a no-op build takes seconds).
.PHONY: bin/kiln bin/kiln-node bin/kiln-init bin/kubectl
bin/kiln:
	@echo "go build bin/kiln (host CLI)"
	@$(GO) build -ldflags '$(LDFLAGS) -X main.kubernetesVersion=$(KUBE_VERSION)' -o $@ ./cmd/kiln
bin/kiln-node:
	@echo "go build bin/kiln-node (Kubernetes $(KUBE_VERSION); a cold build takes 15-20 minutes)"
	@$(GO) build -ldflags '$(LDFLAGS)' -o $@ ./cmd/kiln-node
bin/kiln-init:
	@echo "go build bin/kiln-init (stage 1: mounts the root image)"
	@$(GO) build -ldflags '$(LDFLAGS)' -o $@ ./cmd/kiln-init
bin/kubectl:
	@echo "go build bin/kubectl ($(KUBE_VERSION))"
	@$(GO) build -ldflags '$(LDFLAGS)' -o $@ k8s.io/kubernetes/cmd/kubectl

# The worker stack's programs, copied into images whose node runs pods:
# runc (cgo, static, with seccomp), containerd's runc shim, the CNI plugins,
# and the programs of the OCI images kiln builds (pause, CoreDNS, kiln-echo).
CNI := github.com/containernetworking/plugins/plugins
.PHONY: pods bin/runc bin/containerd-shim-runc-v2 bin/cni bin/oci
pods: bin/runc bin/containerd-shim-runc-v2 bin/cni bin/oci
bin/runc: deps
	@echo "go build bin/runc (static, seccomp)"
	@CGO_ENABLED=1 $(GO) build -tags 'seccomp netgo osusergo' -ldflags '-s -w -X main.version=$(RUNC_VERSION:v%=%) -extldflags -static' -o $@ github.com/opencontainers/runc
bin/containerd-shim-runc-v2:
	@echo "go build bin/containerd-shim-runc-v2"
	@$(GO) build -ldflags '-s -w -X github.com/containerd/containerd/v2/version.Version=$(CONTAINERD_VERSION:v%=%)' -o $@ ./cmd/containerd-shim-runc-v2
bin/cni:
	@echo "go build bin/cni/{bridge,host-local,loopback}"
	@mkdir -p $@ && $(GO) build -ldflags '-s -w' -o $@/ $(CNI)/main/bridge $(CNI)/ipam/host-local $(CNI)/main/loopback
bin/oci:
	@echo "go build bin/oci/{pause,coredns,kiln-echo}"
	@mkdir -p $@ && $(GO) build -ldflags '-s -w' -o $@/ ./images/oci/pause ./images/oci/coredns ./images/oci/kiln-echo

# go.mod and go.sum must be tidy (a new import needs `go mod tidy`), and the
# test packages behind build tags are vetted too.
vet: ## check go.mod/go.sum are tidy, go vet every package, the tagged test packages (host, vm, bench, conformance) included
	$(GO) mod tidy -diff
	$(GO) vet ./...
	$(GO) vet -tags integration ./tests/host/
	$(GO) vet -tags vm ./tests/vm/
	$(GO) vet -tags bench ./tests/bench/
	$(GO) vet -tags conformance ./tests/conformance/

test-unit: deps ## unit tests, including the short QEMU boots of images/ and qemu/
	$(GO) test ./...

test-host: build ## host integration: the master components as real processes on loopback
	@mkdir -p out
	$(GO) test -tags integration -count=1 -timeout 20m -v ./tests/host/ -bin $(CURDIR)/bin 2>&1 | tee out/test-host.log; exit $${PIPESTATUS[0]}

# TestHA (three masters and a worker, 1 vCPU each) runs in its own target:
# on this 2-core machine under TCG it failed five runs in a row on 2026-12-03
# (API servers ready only after 12-14 minutes, waits running out), so it is
# not in make test until the masters boot lighter (README, Several masters).
test-vm: deps build ## VM end-to-end: images booted in QEMU (TCG), used from the host (all but TestHA)
	@mkdir -p out
	$(GO) test -tags vm -count=1 -timeout 70m -v -skip 'TestHA$$' ./tests/vm/ -bin $(CURDIR)/bin 2>&1 | tee out/test-vm.log; exit $${PIPESTATUS[0]}

test-ha: deps build ## TestHA alone: three masters in QEMU, one killed, all lost and restored from a snapshot (about 40 min under TCG)
	@mkdir -p out
	$(GO) test -tags vm -count=1 -timeout 60m -v -run 'TestHA$$' ./tests/vm/ -bin $(CURDIR)/bin 2>&1 | tee out/test-ha.log; exit $${PIPESTATUS[0]}

test: vet test-unit test-host test-vm ## everything CI runs: vet, unit, host integration and VM tests

gen: bin/kiln ## generate a cluster directory in $(CLUSTER) if there is none
	@test -f $(CLUSTER)/cluster.yaml || bin/kiln gen cluster --out $(CLUSTER)

up: build gen ## run a master on this host (loopback), data in $(DATA); Ctrl-C stops it
	bin/kiln-node up --role master --cluster $(CLUSTER) --data-dir $(DATA)

clean: ## remove bin/ and out/ (keeps the Go build cache warm)
	rm -rf bin out

# ---- images: kiln build / kiln run ----
# make image ROLE=master|worker [FORMAT=iso,qcow2] [CLUSTER=dir] [CONFIG=file] [KERNEL=generic] [TOKEN=id.secret]
# make run ROLE=master [BOOT=kernel|iso|qcow2|pxe] [EGRESS=1]
ROLE ?= master
FORMAT ?=
CONFIG ?=
KERNEL ?=
BOOT ?= kernel
# EGRESS=1: kiln run / kiln cluster up --egress, the VMs NATed to this
# machine's networks (README, Egress); anything else keeps them closed.
EGRESS ?=
egress_flag = $(if $(filter 1 yes true on,$(EGRESS)),--egress)
# DISKS=1: make cluster boots each node from a qcow2 disk of its own.
DISKS ?=
disks_flag = $(if $(filter 1 yes true on,$(DISKS)),--disks)
cluster_format = $(if $(disks_flag),kernel$(comma)qcow2,kernel)
comma := ,

.PHONY: deps image run

deps: ## install the Debian packages the image builder and the VM tests need
	scripts/install-deps.sh

# --cluster is passed only when CLUSTER is not the default, so that kiln
# build generates out/cluster the first time (and never a mistyped one).
image: deps bin/kiln bin/kiln-node bin/kiln-init pods ## build the images in out/ROLE: ROLE=master|worker [FORMAT=iso,qcow2] [CLUSTER=dir] [CONFIG=file] [KERNEL=generic] [IMAGES=a.tar,b.tar] [TOKEN=id.secret]
	bin/kiln build --role $(ROLE) --node-binary bin/kiln-node --out out/$(ROLE) $(if $(IMAGES),--images $(IMAGES)) $(if $(TOKEN),--token $(TOKEN)) \
		$(if $(filter-out out/cluster,$(CLUSTER)),--cluster $(CLUSTER)) \
		$(if $(FORMAT),--format $(FORMAT)) $(if $(CONFIG),--config $(CONFIG)) $(if $(KERNEL),--kernel $(KERNEL))

run: deps bin/kiln ## boot out/ROLE in QEMU (make image first): ROLE=master [BOOT=kernel|iso|qcow2|pxe] [EGRESS=1]
	bin/kiln run --image out/$(ROLE) --boot $(BOOT) $(egress_flag)

bench: deps build ## measure sizes, host-mode up → /readyz and memory, and a master + worker in QEMU: image sizes, boot → Ready, memory
	$(GO) test -tags bench -count=1 -timeout 60m -v ./tests/bench/ -bin $(CURDIR)/bin

MASTERS ?= 1
WORKERS ?= 1
cluster: deps build ## boot MASTERS=1 masters and WORKERS=1 workers in QEMU, wait until every node is Ready, print how to use kubectl; EGRESS=1 lets the VMs out (NAT); DISKS=1 boots them from qcow2 disks (kiln upgrade)
	@$(MAKE) --no-print-directory image ROLE=master FORMAT=$(cluster_format)
	@$(MAKE) --no-print-directory image ROLE=worker FORMAT=$(cluster_format)
	bin/kiln cluster up --masters $(MASTERS) --workers $(WORKERS) $(egress_flag) $(disks_flag)

cluster-down: ## power off the VMs of make cluster
	bin/kiln cluster down

cluster-status: ## the VMs of make cluster and their nodes
	bin/kiln cluster status

# ---- conformance: upstream's e2e suite against a kiln cluster in QEMU ----
# make conformance [FOCUS=regexp] [SKIP=regexp] [CONFORMANCE_WORKERS=2]
# e2e.test and agnhost are built from k8s.io/kubernetes at go.mod's version;
# tests/conformance builds the images the specs run (agnhost, busybox,
# pause) under their upstream names, serves them from a registry on the
# host's loopback that every node mirrors registry.k8s.io to, boots a
# master and CONFORMANCE_WORKERS workers, runs the [Conformance] specs (FOCUS and SKIP
# narrow them) and writes out/conformance/junit.xml and summary.txt. Not
# part of make test: the whole suite takes hours under TCG.
.PHONY: conformance out/conformance/e2e.test out/conformance/agnhost
CONFORMANCE_WORKERS ?= 2
out/conformance/e2e.test:
	@echo "go test -c k8s.io/kubernetes/test/e2e ($(KUBE_VERSION)) -> $@"
	@mkdir -p $(@D) && $(GO) test -c -ldflags '-s -w $(KUBE_LDFLAGS)' -o $@ k8s.io/kubernetes/test/e2e
out/conformance/agnhost:
	@echo "go build k8s.io/kubernetes/test/images/agnhost ($(KUBE_VERSION)) -> $@"
	@mkdir -p $(@D) && $(GO) build -ldflags '-s -w $(KUBE_LDFLAGS)' -o $@ k8s.io/kubernetes/test/images/agnhost
conformance: deps build out/conformance/e2e.test out/conformance/agnhost ## upstream's conformance suite against a master and CONFORMANCE_WORKERS=2 workers in QEMU: out/conformance/junit.xml and a summary line; FOCUS=regexp SKIP=regexp narrow it (the whole suite takes hours under TCG)
	$(GO) test -tags conformance -count=1 -timeout 0 -v -run 'TestConformance$$' ./tests/conformance/ -bin $(CURDIR)/bin -out $(CURDIR)/out/conformance \
		-focus "$$FOCUS" -skip "$$SKIP" -workers $(CONFORMANCE_WORKERS) 2>&1 | tee out/conformance/test.log; exit $${PIPESTATUS[0]}
