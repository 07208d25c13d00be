"""Which broker node a long-lived process connects to next (inbox_outbox.broker.Nodes)."""

import pytest

from inbox_outbox.broker import Nodes

THREE = "amqp://u:p@a:5701//;amqp://u:p@b:5702//;amqp://u:p@c:5703//"


def ports(connections):
    return [c.port for c in connections]


def test_each_node_is_offered_once_per_attempt_from_the_first():
    assert ports(Nodes(THREE).connections()) == [5701, 5702, 5703]


def test_a_reconnect_starts_at_the_node_after_the_one_used_last():
    nodes = Nodes(THREE)
    first = next(nodes.connections())  # connected to a; later its connection dies
    assert first.port == 5701
    assert ports(nodes.connections()) == [5702, 5703, 5701]
    used = nodes.connections()
    next(used), next(used)  # b refused, c took it
    assert ports(nodes.connections()) == [5701, 5702, 5703]


def test_one_url_is_that_url_every_time():
    nodes = Nodes("amqp://u:p@a:5672//")
    assert ports(nodes.connections()) == [5672]
    assert ports(nodes.connections()) == [5672]


def test_each_node_keeps_its_own_credentials_and_vhost():
    nodes = Nodes("amqp://u1:p1@a:5701/one;amqp://u2:p2@b:5702/two")
    assert [(c.userid, c.password, c.virtual_host) for c in nodes.connections()] == [
        ("u1", "p1", "one"),
        ("u2", "p2", "two"),
    ]


def test_a_list_with_a_bad_entry_is_refused_before_any_connection():
    with pytest.raises(ValueError, match="is not one"):
        Nodes("amqp://a//;")
