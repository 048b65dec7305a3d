"""dstream/names.py: one sanitiser for Swarm and Kubernetes names (library audit A1.1)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from dstream.names import label_value, resource_name, swarm_object_name
from dstream.tooling.deploy import service_name
from dstream.tooling.kubernetes import resource_name as kubernetes_name

# moby/swarmkit manager/controlapi/common.go
SWARM_SERVICE = re.compile(r"^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$")  # and at most 63
SWARM_OBJECT = re.compile(r"^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$")  # and at most 64
# kubernetes/apimachinery pkg/util/validation/validation.go
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # and at most 63
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")  # and at most 63

task_names = st.text(min_size=1, max_size=120)


def test_the_review_s_collision_is_gone() -> None:
    assert service_name("orders/eu") != service_name("orders?eu")
    assert service_name("orders") == "dstream-orders"  # a valid name stays readable
    assert service_name("orders/eu") == kubernetes_name("orders/eu")  # one sanitiser for both engines


@settings(max_examples=500, deadline=None)
@given(name=task_names)
def test_every_name_is_valid_for_each_engine(name: str) -> None:
    service = resource_name(name)
    assert len(service) <= 63
    assert SWARM_SERVICE.match(service), service
    assert DNS1123_LABEL.match(service), service
    value = label_value(name)
    assert len(value) <= 63
    assert LABEL_VALUE.match(value), value
    for kind, unique in (("hcl", "0123456789ab"), ("aws-secret-access-key-for-prod", "deadbeef")):
        obj = swarm_object_name(service, kind, unique)
        assert len(obj) <= 64, obj
        assert SWARM_OBJECT.match(obj), obj


@settings(max_examples=500, deadline=None)
@given(names=st.lists(task_names, min_size=2, max_size=6, unique=True))
def test_distinct_task_names_give_distinct_names(names: list[str]) -> None:
    assert len({resource_name(n) for n in names}) == len(names)
    assert len({label_value(n) for n in names}) == len(names)


@settings(max_examples=300, deadline=None)
@given(head=st.text("abc", min_size=60, max_size=60), a=st.text("xyz", min_size=1), b=st.text("xyz", min_size=1))
def test_long_names_that_share_a_head_stay_apart(head: str, a: str, b: str) -> None:
    if a != b:
        assert resource_name(head + a) != resource_name(head + b)
