%% @doc The network mode of `macula_routing_server' with `rust-node' processes as its peers: the
%% server stays responsive while lookups wait on hung peers, a lookup always replies within its
%% bound, peer and lookup events and the network counters reflect what happens, and bad network
%% settings are refused before any process starts.
%%
%% The server runs in this VM (one per VM); `end_per_testcase' stops it and every rust-node the
%% case started, pass or fail.
-module(macula_net_SUITE).

-include_lib("stdlib/include/assert.hrl").

-export([all/0, suite/0, init_per_suite/1, end_per_suite/1,
         init_per_testcase/2, end_per_testcase/2]).
-export([server_never_blocked_by_lookups/1,
         find_value_bounded_when_peers_hang/1,
         peer_and_lookup_events/1,
         stats_counters_move/1,
         bad_settings_are_refused/1]).

-define(SERVER, macula_routing_server).
-define(WAIT_MS, 10000).
%% How long a dead peer may stay in the routing table: three failures in a row, the last two
%% the probes after its 5 s and 10 s as a suspect, each sent at a housekeeping tick.
-define(EVICT_WAIT_MS, 30000).
%% Lookups started at once while a peer hangs, and local calls made meanwhile.
-define(LOOKUPS, 100).
-define(LOCAL_OPS, 10000).
%% How late past `lookup_timeout_ms' a reply may come (scheduling of this VM under load).
-define(REPLY_MARGIN_MS, 500).

all() ->
    [server_never_blocked_by_lookups,
     find_value_bounded_when_peers_hang,
     peer_and_lookup_events,
     stats_counters_move,
     bad_settings_are_refused].

suite() ->
    [{timetrap, {minutes, 2}}].

init_per_suite(Config) ->
    macula_cluster_harness:check_binary(Config).

end_per_suite(_Config) ->
    macula_cluster_harness:stop_leftover().

init_per_testcase(_Case, Config) ->
    [{harness, macula_cluster_harness:start()} | Config].

end_per_testcase(_Case, Config) ->
    catch gen_server:stop(?SERVER),
    macula_cluster_harness:stop_all(harness(Config)).

%%--------------------------------------------------------------------------------------------
%% Cases
%%--------------------------------------------------------------------------------------------

%% The server's only peer is slow, then hung: it is reached through a relay that holds every
%% packet 250 ms (its round trips, the first with a QUIC handshake, are measured at a second or
%% so while it joins), then stopped with SIGSTOP, so that a request to it waits longer than the
%% lookup timeout. While 100 processes each wait for a `find_value' of a missing key (all in
%% flight, none answered), 10 000 local calls and calls into the gen_server complete; then every
%% lookup answers `{ok, []}' within its bound.
server_never_blocked_by_lookups(Config) ->
    Harness = harness(Config),
    Peer = macula_cluster_harness:start_rust(Harness, "r1", []),
    Relay = start_relay(addr(Peer), 250),
    try slow_peer_never_blocks_the_server(Harness, Peer, Relay)
    after stop_relay(Relay)
    end.

slow_peer_never_blocks_the_server(Harness, Peer, Relay) ->
    LookupTimeout = 3000,
    start_server(Harness, #{bootstrap => [relay_addr(Relay)], lookup_timeout_ms => LookupTimeout,
                            request_timeout_ms => 10000}),
    wait_for_peers([Peer]),
    {ok, Rtt} = macula_routing_server:rtt(?SERVER, maps:get(id, Peer)),
    ct:log("round trip to the peer through the relay: ~b us", [Rtt]),
    Idle = local_ops_per_second(),
    ok = macula_cluster_harness:signal(Peer, "STOP"),
    Parent = self(),
    Lookups = [spawn_link(fun() -> Parent ! {looked_up, self(), timed_find_value()} end)
               || _ <- lists:seq(1, ?LOOKUPS)],
    wait_until(lookups_in_flight,
               fun() ->
                       case [P || P <- Lookups, not waits_for_lookup(P)] of
                           [] -> {ok, all};
                           Other -> {wait, {not_waiting, length(Other)}}
                       end
               end),
    Busy = local_ops_per_second(),
    _ = sys:get_state(?SERVER),
    ?assert(is_integer(gen_server:call(?SERVER, size))),
    ?assertEqual([], [P || P <- Lookups, not waits_for_lookup(P)]),
    ?assertEqual(none, receive {looked_up, _, _} = Early -> Early after 0 -> none end),
    ct:pal("local store_local/get_local calls per second: ~b idle, ~b with ~b lookups in flight",
           [Idle, Busy, ?LOOKUPS]),
    Replies = [receive {looked_up, P, Reply} -> Reply
               after LookupTimeout + ?WAIT_MS -> ct:fail({no_reply, P})
               end || P <- Lookups],
    ct:log("lookup replies after (ms): ~w", [[Ms || {_, Ms} <- Replies]]),
    ?assertEqual([], [R || {R, _} <- Replies, R =/= {ok, []}]),
    ?assertEqual([], [Ms || {_, Ms} <- Replies, Ms > LookupTimeout + ?REPLY_MARGIN_MS]),
    ok = macula_cluster_harness:stop_rust(Peer).

%% A UDP relay between `To' ("ip:port") and the first other sender, holding each packet
%% `DelayMs'. Linked to the caller; `stop_relay/1' ends it.
start_relay(To, DelayMs) ->
    [Host, Port] = string:split(To, ":"),
    {ok, Ip} = inet:parse_address(Host),
    Parent = self(),
    Relay = spawn_link(fun() ->
                               {ok, Socket} = gen_udp:open(0, [binary, {ip, {127, 0, 0, 1}},
                                                               {active, true}]),
                               {ok, Bound} = inet:port(Socket),
                               Parent ! {relay_port, self(), Bound},
                               relay(Socket, {Ip, list_to_integer(Port)}, undefined, DelayMs)
                       end),
    receive {relay_port, Relay, Bound} -> {Relay, Bound} end.

relay_addr({_Relay, Port}) ->
    "127.0.0.1:" ++ integer_to_list(Port).

stop_relay({Relay, _Port}) ->
    unlink(Relay),
    exit(Relay, kill).

relay(Socket, To, Client, DelayMs) ->
    receive
        {udp, Socket, Ip, Port, Packet} when {Ip, Port} =:= To ->
            _ = [erlang:send_after(DelayMs, self(), {forward, Client, Packet})
                 || Client =/= undefined],
            relay(Socket, To, Client, DelayMs);
        {udp, Socket, Ip, Port, Packet} ->
            erlang:send_after(DelayMs, self(), {forward, To, Packet}),
            relay(Socket, To, {Ip, Port}, DelayMs);
        {forward, {Ip, Port}, Packet} ->
            ok = gen_udp:send(Socket, Ip, Port, Packet),
            relay(Socket, To, Client, DelayMs)
    end.

%% With a short lookup timeout and a longer request timeout, `find_value' replies `{ok, []}'
%% within the lookup timeout both when some peers hang and when all of them do.
find_value_bounded_when_peers_hang(Config) ->
    Harness = harness(Config),
    Peers = start_rust_nodes(Harness, 3),
    LookupTimeout = 1500,
    start_server(Harness, #{bootstrap => [addr(P) || P <- Peers],
                            lookup_timeout_ms => LookupTimeout, request_timeout_ms => 5000}),
    wait_for_peers(Peers),
    {Hung, [Live]} = lists:split(2, Peers),
    _ = [macula_cluster_harness:signal(P, "STOP") || P <- Hung],
    bounded_lookups(some_peers_hang, LookupTimeout),
    ok = macula_cluster_harness:signal(Live, "STOP"),
    bounded_lookups(all_peers_hang, LookupTimeout).

%% Subscribed to peers and lookups: `peer_up' when a rust-node joins; lookup events with their
%% fields; `peer_down' once the node is killed and a lookup's request to it, then the probes
%% that follow, fail.
peer_and_lookup_events(Config) ->
    Harness = harness(Config),
    start_server(Harness, #{request_timeout_ms => 1000, lookup_timeout_ms => 3000}),
    ok = macula_routing_server:subscribe(?SERVER, [peers, lookups]),
    #{id := PeerId} = Peer =
        macula_cluster_harness:start_rust(Harness, "r1", ["--bootstrap", addr(?SERVER)]),
    {peer_up, #{address := {{127, 0, 0, 1}, Port}}} =
        receive_event(fun({peer_up, #{node_id := Id}}) -> Id =:= PeerId; (_) -> false end),
    ?assertEqual(addr(Peer), "127.0.0.1:" ++ integer_to_list(Port)),
    %% A lookup through the live peer: answered, nothing failed.
    Live = missing_key(),
    ?assertEqual({ok, []}, macula_routing_server:find_value(?SERVER, Live, 3)),
    {lookup, Answered} = receive_event(fun(E) -> is_lookup_of(Live, E) end),
    ct:log("lookup through a live peer: ~p", [Answered]),
    ?assertMatch(#{kind := find_value, providers := 0, failed := 0, timed_out := false,
                   queried := Queried, hops := Hops, elapsed_us := Us}
                   when Queried >= 1 andalso Hops >= 1 andalso Us > 0, Answered),
    ok = macula_cluster_harness:signal(Peer, "KILL"),
    wait_until(peer_killed,
               fun() ->
                       case macula_cluster_harness:is_os_process_alive(Peer) of
                           false -> {ok, dead};
                           true -> {wait, alive}
                       end
               end),
    %% Lookups until one of them has a request fail on the dead peer; then it is reported down.
    Failed = wait_until(
               lookup_fails_on_dead_peer,
               fun() ->
                       Key = missing_key(),
                       {ok, []} = macula_routing_server:find_value(?SERVER, Key, 3),
                       case receive_event(fun(E) -> is_lookup_of(Key, E) end) of
                           {lookup, #{failed := F} = Summary} when F >= 1 -> {ok, Summary};
                           {lookup, Summary} -> {wait, Summary}
                       end
               end),
    ct:log("lookup that failed on the dead peer: ~p", [Failed]),
    ?assertMatch(#{kind := find_value, providers := 0, queried := Q, failed := F}
                   when Q >= F, Failed),
    %% Suspect at once; out of the table once the probes after 5 s and 10 s more fail too.
    ?assertMatch(#{suspects := 1}, macula_routing_server:stats(?SERVER)),
    receive_event(fun({peer_down, #{node_id := Id}}) -> Id =:= PeerId; (_) -> false end,
                  ?EVICT_WAIT_MS),
    ok = macula_routing_server:unsubscribe(?SERVER).

%% `stats/1': `peers' and `requests' move when a rust-node joins and queries this node, and
%% `lookups' when a `find_value' misses locally.
stats_counters_move(Config) ->
    Harness = harness(Config),
    start_server(Harness, #{}),
    #{peers := 0, requests := Requests0, lookups := Lookups0} =
        macula_routing_server:stats(?SERVER),
    Peer = macula_cluster_harness:start_rust(Harness, "r1", ["--bootstrap", addr(?SERVER)]),
    Joined = wait_until(peer_counted,
                        fun() ->
                                case macula_routing_server:stats(?SERVER) of
                                    #{peers := 1, requests := R} = S when R > Requests0 -> {ok, S};
                                    S -> {wait, maps:with([peers, requests], S)}
                                end
                        end),
    %% The rust-node looks a service up: it asks this node.
    {1, _} = macula_cluster_harness:ctl(Peer, ["discover", "stats.nobody", "--json"]),
    #{requests := Requests1} = macula_routing_server:stats(?SERVER),
    ?assert(Requests1 > maps:get(requests, Joined)),
    {ok, []} = macula_routing_server:find_value(?SERVER, missing_key(), 3),
    #{lookups := Lookups1} = macula_routing_server:stats(?SERVER),
    ?assert(Lookups1 > Lookups0),
    ct:log("stats: before ~p, joined ~p, after ~p",
           [{Requests0, Lookups0}, Joined, macula_routing_server:stats(?SERVER)]).

%% Each refusal is an `{error, _}' returned to a caller that stays alive (it exits normally
%% later), with no server registered: a listen address in use, a bootstrap entry that does not
%% resolve, a `k' of 65, a node id that is not the identity's.
bad_settings_are_refused(Config) ->
    Harness = harness(Config),
    Identity = filename:join(macula_cluster_harness:dir(Harness), "beam.key"),
    Base = #{listen => "127.0.0.1:0", identity => Identity},
    {ok, Socket} = gen_udp:open(0, [{ip, {127, 0, 0, 1}}]),
    {ok, TakenPort} = inet:port(Socket),
    ?assertMatch({error, {invalid_settings, listen, _}},
                 refused(auto, Base#{listen => {{127, 0, 0, 1}, TakenPort}})),
    ok = gen_udp:close(Socket),
    ?assertMatch({error, {invalid_settings, bootstrap, _}},
                 refused(auto, Base#{bootstrap => ["no-such-host.invalid:4000"]})),
    ?assertEqual({error, {invalid_config, k, 65}}, refused(auto, Base#{k => 65})),
    Id = identity_node_id(Base),
    Other = crypto:strong_rand_bytes(32),
    ?assertEqual({error, {node_id_mismatch, #{given => Other, identity => Id}}},
                 refused(Other, Base)).

%%--------------------------------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------------------------------

harness(Config) ->
    proplists:get_value(harness, Config).

start_server(Harness, Config) ->
    Identity = filename:join(macula_cluster_harness:dir(Harness), "beam.key"),
    {ok, Pid} = macula_routing_server:start_link(
                  auto, maps:merge(#{listen => "127.0.0.1:0", identity => Identity}, Config)),
    Pid.

%% `"127.0.0.1:Port"' of a Rust node or of this VM's server.
addr(?SERVER) ->
    {ok, {{127, 0, 0, 1}, Port}} = macula_routing_server:address(?SERVER),
    "127.0.0.1:" ++ integer_to_list(Port);
addr(#{addr := Addr}) ->
    binary_to_list(Addr).

%% A first node, and the others joining through it.
start_rust_nodes(Harness, Count) ->
    First = macula_cluster_harness:start_rust(Harness, "r1", []),
    [First | [macula_cluster_harness:start_rust(Harness, "r" ++ integer_to_list(N),
                                                ["--bootstrap", addr(First)])
              || N <- lists:seq(2, Count)]].

%% The server's table holds every one of `Peers'.
wait_for_peers(Peers) ->
    Wanted = macula_cluster_harness:ids(Peers),
    wait_until(peers_known,
               fun() ->
                       Known = [Id || #{node_id := Id} <- macula_routing_server:peers(?SERVER)],
                       case Wanted -- Known of
                           [] -> {ok, Known};
                           Missing -> {wait, {missing, length(Missing)}}
                       end
               end).

wait_until(What, Check) ->
    macula_cluster_harness:wait_until(What, Check, ?WAIT_MS).

missing_key() ->
    crypto:strong_rand_bytes(32).

%% `{Reply, Milliseconds}' of a `find_value' of a key nobody holds.
timed_find_value() ->
    {Us, Reply} = timer:tc(macula_routing_server, find_value, [?SERVER, missing_key(), 3]),
    {Reply, Us div 1000}.

%% A process waiting for its lookup's reply inside `find_value'.
waits_for_lookup(Pid) ->
    erlang:process_info(Pid, current_function) =:=
        {current_function, {macula_routing_server, await_lookup, 2}}.

%% 10 concurrent lookups of missing keys each reply `{ok, []}' within the bound.
bounded_lookups(What, LookupTimeout) ->
    Parent = self(),
    Pids = [spawn_link(fun() -> Parent ! {looked_up, self(), timed_find_value()} end)
            || _ <- lists:seq(1, 10)],
    Replies = [receive {looked_up, P, Reply} -> Reply
               after LookupTimeout + ?WAIT_MS -> ct:fail({no_reply, What, P})
               end || P <- Pids],
    ct:log("~p: replies after (ms) ~w", [What, [Ms || {_, Ms} <- Replies]]),
    ?assertEqual([], [R || {R, _} <- Replies, R =/= {ok, []}]),
    ?assertEqual([], [Ms || {_, Ms} <- Replies, Ms > LookupTimeout + ?REPLY_MARGIN_MS]).

%% Store and read calls (half each) per second, all on one key.
local_ops_per_second() ->
    Key = <<"local-ops">>,
    Provider = #{node_id => <<1:256>>, endpoint => <<"https://local.test:443">>},
    {Us, ok} = timer:tc(fun() -> local_ops(?LOCAL_OPS div 2, Key, Provider) end),
    ?LOCAL_OPS * 1000000 div max(1, Us).

local_ops(0, _Key, _Provider) ->
    ok;
local_ops(N, Key, Provider) ->
    ok = macula_routing_server:store_local(?SERVER, Key, Provider),
    {ok, [_]} = macula_routing_server:get_local(?SERVER, Key),
    local_ops(N - 1, Key, Provider).

%% The first event `Match' accepts, within the wait bound; the events before it stay queued.
receive_event(Match) ->
    receive_event(Match, ?WAIT_MS).

receive_event(Match, WaitMs) ->
    receive_event(Match, erlang:monotonic_time(millisecond) + WaitMs, []).

receive_event(Match, Deadline, Skipped) ->
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {macula_dht_event, Event} = Message ->
            case Match(Event) of
                true ->
                    _ = [self() ! M || M <- lists:reverse(Skipped)],
                    Event;
                false ->
                    receive_event(Match, Deadline, [Message | Skipped])
            end
    after Left ->
        ct:fail({no_such_event, [E || {_, E} <- lists:reverse(Skipped)]})
    end.

is_lookup_of(Key, {lookup, #{kind := find_value, target := Key}}) -> true;
is_lookup_of(_Key, _Event) -> false.

%% `start_link' from a fresh caller that does not trap exits: its reply; then the caller must
%% end normally (a refused start must not kill it through the link) with no server registered.
refused(NodeId, Config) ->
    Parent = self(),
    {Caller, Monitor} =
        spawn_monitor(fun() ->
                              Parent ! {start_link, self(),
                                        macula_routing_server:start_link(NodeId, Config)},
                              receive finish -> ok end
                      end),
    Reply = receive {start_link, Caller, R} -> R
            after ?WAIT_MS -> ct:fail(start_link_does_not_return)
            end,
    ?assertEqual(undefined, whereis(?SERVER)),
    Caller ! finish,
    receive {'DOWN', Monitor, process, Caller, Why} -> ?assertEqual(normal, Why) end,
    Reply.

%% The node id bound to the identity key of `Config', read from a server started with it.
identity_node_id(Config) ->
    {ok, Pid} = macula_routing_server:start_link(auto, Config),
    Id = macula_routing_server:node_id(?SERVER),
    unlink(Pid),
    ok = gen_server:stop(Pid),
    Id.
