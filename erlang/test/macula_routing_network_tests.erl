%% @doc EUnit tests of macula_routing_server's network mode on one VM, without peers: the
%% settings and how bad ones are refused, the identity and the node id, the node's own answers,
%% restart on the same port, and events. Clusters of several VMs are in the Common Test suites.
-module(macula_routing_network_tests).

-include_lib("eunit/include/eunit.hrl").

-define(LOOPBACK, {127, 0, 0, 1}).

%%--------------------------------------------------------------------------------------------
%% Settings
%%--------------------------------------------------------------------------------------------

parse_network_defaults_test() ->
    {ok, #{network := undefined}} = macula_routing_config:parse(#{k => 20}),
    {ok, #{network := Network}} = macula_routing_config:parse(#{listen => {?LOOPBACK, 0}}),
    ?assertEqual(#{listen => <<"127.0.0.1:0">>, bootstrap => [], identity => undefined,
                   lookup_timeout_ms => 5000, request_timeout_ms => 2000,
                   publisher_share_pct => 10, peer_stores_per_s => 2000}, Network).

parse_network_addresses_test() ->
    Config = #{listen => "[::1]:4000",
               bootstrap => [{{0, 0, 0, 0, 0, 0, 0, 1}, 4001}, <<"node-b.example:4002">>, "10.0.0.1:4003"],
               identity => "/var/lib/node.key", lookup_timeout_ms => 250},
    {ok, #{network := Network}} = macula_routing_config:parse(Config),
    ?assertEqual(<<"[::1]:4000">>, maps:get(listen, Network)),
    ?assertEqual([<<"[::1]:4001">>, <<"node-b.example:4002">>, <<"10.0.0.1:4003">>],
                 maps:get(bootstrap, Network)),
    ?assertEqual(<<"/var/lib/node.key">>, maps:get(identity, Network)),
    ?assertEqual(250, maps:get(lookup_timeout_ms, Network)).

parse_network_refuses_bad_values_test_() ->
    Listen = {?LOOPBACK, 0},
    TooMany = [{?LOOPBACK, P} || P <- lists:seq(1, 17)],
    Bad = [{listen, {?LOOPBACK, 70000}},
           {listen, {{1, 2, 3}, 80}},
           {listen, <<>>},
           {listen, binary:copy(<<"a">>, 256)},
           {listen, 42},
           {bootstrap, "127.0.0.1:1"},
           {bootstrap, TooMany},
           {bootstrap, [{?LOOPBACK, 1}, nope]},
           {identity, 42},
           {identity, ""},
           {lookup_timeout_ms, 0},
           {request_timeout_ms, infinity},
           %% narrower on the network: a reply carries at most 64 nodes, a key at most 1 KiB
           {k, 65},
           {max_key_bytes, 1025}],
    [?_assertEqual({error, {invalid_config, Key, Value}},
                   macula_routing_config:parse(maps:merge(#{listen => Listen}, #{Key => Value})))
     || {Key, Value} <- Bad].

%% One table for Rust and Erlang: the defaults and ranges are the engine's.
settings_come_from_the_engine_test() ->
    #{server := Server, network := Network} = macula_dht_nif:settings(),
    ?assertEqual({k, 20, 1, 65536}, lists:keyfind(k, 1, Server)),
    ?assertEqual({k, 20, 1, 64}, lists:keyfind(k, 1, Network)),
    ?assertEqual({lookup_timeout_ms, 5000, 1, 600000}, lists:keyfind(lookup_timeout_ms, 1, Network)),
    Defaults = macula_routing_config:defaults(),
    [?assertEqual(Default, maps:get(Name, Defaults)) || {Name, Default, _, _} <- Server],
    %% Without `listen', the old server's range of `k' stays.
    ?assertMatch({ok, #{k := 65536}}, macula_routing_config:parse(#{k => 65536})),
    ?assertEqual({error, {invalid_config, k, 65537}}, macula_routing_config:parse(#{k => 65537})).

%% Without `listen', network keys are ignored like any unknown key.
network_keys_without_listen_are_ignored_test() ->
    ?assertMatch({ok, #{network := undefined}},
                 macula_routing_config:parse(#{bootstrap => nope, identity => 42})).

%%--------------------------------------------------------------------------------------------
%% One networked server
%%--------------------------------------------------------------------------------------------

with_dir(Test) ->
    {setup, fun make_dir/0, fun remove_dir/1, Test}.

make_dir() ->
    Dir = filename:join(os:getenv("TMPDIR", "/tmp"),
                        "macula_net_" ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Dir.

remove_dir(Dir) ->
    catch gen_server:stop(macula_routing_server),
    _ = file:del_dir_r(Dir),
    ok.

start(Config) ->
    catch gen_server:stop(macula_routing_server),
    {ok, Pid} = macula_routing_server:start_link(auto, Config),
    unlink(Pid),
    Pid.

stop(Pid) ->
    catch gen_server:stop(Pid).

identity_and_node_id_test_() ->
    with_dir(fun(Dir) -> ?_test(begin
        Key = filename:join(Dir, "node.key"),
        Config = #{listen => {?LOOPBACK, 0}, identity => Key},
        P1 = start(Config),
        Id = macula_routing_server:node_id(P1),
        stop(P1),
        ?assertEqual(32, byte_size(Id)),
        ?assert(filelib:is_regular(Key)),
        %% The id is the key's: the same file gives it again, by `auto' or by itself.
        P2 = start(Config),
        ?assertEqual(Id, macula_routing_server:node_id(P2)),
        stop(P2),
        {ok, P3} = macula_routing_server:start_link(Id, Config),
        unlink(P3),
        stop(P3),
        %% Another id is refused before any process starts, and the caller lives on.
        Other = macula_routing_nodeid:generate(),
        ?assertEqual({error, {node_id_mismatch, #{given => Other, identity => Id}}},
                     macula_routing_server:start_link(Other, Config)),
        ?assertEqual(undefined, whereis(macula_routing_server))
    end) end).

refused_settings_test_() ->
    with_dir(fun(Dir) -> ?_test(begin
        {ok, Busy} = gen_udp:open(0, [{ip, ?LOOPBACK}]),
        NotAKey = filename:join(Dir, "not-a.key"),
        ok = file:write_file(NotAKey, <<"not a key">>),
        {ok, BusyPort} = inet:port(Busy),
        %% Each refusal names the setting: the reason starts with these elements.
        Refusals = [{#{listen => {?LOOPBACK, BusyPort}}, [invalid_settings, listen]},
                    {#{listen => {?LOOPBACK, 0}, bootstrap => ["no-such-host.invalid:4000"]},
                     [invalid_settings, bootstrap]},
                    {#{listen => {?LOOPBACK, 0}, k => 65}, [invalid_config, k]},
                    {#{listen => {?LOOPBACK, 0}, identity => NotAKey}, [identity]},
                    {#{listen => "not an address"}, [invalid_settings, listen]}],
        try
            [begin
                 {error, Reason} = macula_routing_server:start_link(auto, C),
                 ?assertEqual(undefined, whereis(macula_routing_server)),
                 ?assertEqual(Named, lists:sublist(tuple_to_list(Reason), length(Named)))
             end || {C, Named} <- Refusals]
        after
            gen_udp:close(Busy)
        end
    end) end).

single_networked_node_test_() ->
    {setup,
     fun() -> start(#{listen => {?LOOPBACK, 0}, lookup_timeout_ms => 1000}) end,
     fun stop/1,
     fun(P) -> [
        ?_assertMatch({ok, {?LOOPBACK, Port}} when Port > 0, macula_routing_server:address(P)),
        ?_assertEqual([], macula_routing_server:peers(P)),
        ?_test(alone_it_answers_for_every_key(P)),
        ?_test(stats_have_the_network_counters(P)),
        ?_test(published_records_carry_the_servers_key(P)),
        ?_test(a_lookup_nobody_answered_is_counted(P)),
        ?_test(subscriptions_are_checked(P)),
        ?_test(picks_rotate_and_skip_reported_providers(P))
     ] end}.

alone_it_answers_for_every_key(P) ->
    Key = <<"alone">>,
    ?assertEqual({ok, []}, macula_routing_server:find_value(P, Key, 20)),
    Provider = #{node_id => <<"p1">>, endpoint => <<"https://p1:1">>},
    ?assertEqual(ok, macula_routing_server:store(P, Key, Provider)),
    ?assertEqual({ok, [Provider]}, macula_routing_server:find_value(P, Key, 20)),
    ?assertEqual({error, {invalid_count, 0}}, macula_routing_server:find_value(P, Key, 0)),
    ?assertEqual({error, {invalid_key, not_a_binary}}, macula_routing_server:find_value(P, key, 20)),
    %% Bad input to store/3 is refused and the stored provider stays.
    ?assertMatch({error, _}, macula_routing_server:store(P, Key, not_a_map)),
    ?assertEqual({ok, [Provider]}, macula_routing_server:get_local(P, Key)),
    %% A provider it published is removed (here: everywhere there is, i.e. here).
    ?assertEqual(ok, macula_routing_server:delete_local(P, Key, <<"p1">>)),
    ?assertEqual(not_found, macula_routing_server:get_local(P, Key)).

stats_have_the_network_counters(P) ->
    Stats = macula_routing_server:stats(P),
    [?assert(is_integer(maps:get(Name, Stats)))
     || Name <- [keys, records, bytes, expired, rejected, nodes, nif_allocated_bytes, peers,
                 requests, bad_requests, tombstones, lookups, lookup_timeouts, lookup_p50_us,
                 lookup_p99_us, lookup_failures, store_failures, remove_failures,
                 handoff_failures, refused_version, refused_forged, refused_wrong_publisher,
                 refused_stale, refused_replay, refused_quota, refused_rate,
                 forged_in_replies, suspects]],
    ?assertEqual(0, maps:get(peers, Stats)),
    %% Alone, it has joined nothing, and has no round trip to tell.
    ?assertEqual(false, maps:get(joined, Stats)),
    ?assertEqual(unknown, macula_routing_server:rtt(P, <<1:256>>)),
    ?assertEqual({error, {invalid_node_id, not_32_bytes}}, macula_routing_server:rtt(P, <<1>>)),
    ?assertEqual({error, {invalid_node_id, not_32_bytes}}, macula_routing_server:rtt(P, nope)),
    ?assertEqual(2, maps:get(protocol, Stats)).

%% `store/3' publishes under the server's identity: the record carries its public key, whose
%% SHA-256 is the node id. `store_local/3' stays local and unsigned. Old callers see plain maps.
%% A provider naming another node's id is refused.
published_records_carry_the_servers_key(P) ->
    Key = <<"signed">>,
    Published = #{node_id => <<"pub">>, endpoint => <<"https://pub:1">>},
    Local = #{node_id => <<"loc">>, endpoint => <<"https://loc:1">>},
    ok = macula_routing_server:store(P, Key, Published),
    ok = macula_routing_server:store_local(P, Key, Local),
    {ok, Pairs} = macula_routing_server:publishers(P, Key),
    [{Local, local}, {Published, Publisher}] = lists:sort(Pairs),
    ?assertEqual(macula_routing_server:node_id(P), crypto:hash(sha256, Publisher)),
    ?assertEqual({ok, [Local, Published]}, macula_routing_server:get_local(P, Key)),
    ?assertEqual(not_found, macula_routing_server:publishers(P, <<"nothing here">>)),
    ?assertEqual({error, {invalid_key, not_a_binary}}, macula_routing_server:publishers(P, nope)),
    %% A provider without node_id names no slot on other nodes: stored here, as before.
    ok = macula_routing_server:store(P, Key, #{endpoint => <<"https://anon:1">>}),
    {ok, Three} = macula_routing_server:publishers(P, Key),
    ?assertEqual(3, length(Three)),
    %% Another node's id is not this server's to publish: refused, nothing stored.
    Other = #{node_id => <<7:256>>, endpoint => <<"https://other:1">>},
    ?assertEqual({error, {wrong_publisher, <<7:256>>}}, macula_routing_server:store(P, Key, Other)),
    ?assertEqual({ok, Three}, macula_routing_server:publishers(P, Key)),
    %% Its own id is: the record is signed like any other.
    Own = #{node_id => macula_routing_server:node_id(P), endpoint => <<"https://own:1">>},
    ok = macula_routing_server:store(P, Key, Own),
    {ok, Four} = macula_routing_server:publishers(P, Key),
    ?assertEqual([Publisher], [Pub || {#{endpoint := <<"https://own:1">>}, Pub} <- Four]).

%% The server's picker (the one `rust-node ctl pick' uses) over the providers this node holds.
picks_rotate_and_skip_reported_providers(P) ->
    Service = <<"picked.service">>,
    Key = macula_dht_nif:sha256(Service),
    [ok = macula_routing_server:store(P, Key, #{node_id => Id, endpoint => <<"https://", Id/binary>>,
                                                metadata => #{load => Load}})
     || {Id, Load} <- [{<<"c">>, 5}, {<<"a">>, 9}, {<<"b">>, 1}]],
    Pick = fun(Strategy) ->
                   {ok, #{node_id := Id}} = macula_routing_server:pick(P, Service, Strategy),
                   Id
           end,
    ?assertEqual([<<"a">>, <<"b">>, <<"c">>, <<"a">>, <<"b">>, <<"c">>],
                 [Pick(round_robin) || _ <- lists:seq(1, 6)]),
    ?assertEqual(<<"b">>, Pick(least_loaded)),
    ok = macula_routing_server:report_failure(P, Service, <<"b">>),
    ?assertEqual(<<"c">>, Pick(least_loaded)),
    ?assertEqual([<<"a">>, <<"c">>], lists:usort([Pick(random) || _ <- lists:seq(1, 40)])),
    [ok = macula_routing_server:report_failure(P, Service, Id) || Id <- [<<"a">>, <<"c">>]],
    ?assertEqual({error, no_providers}, macula_routing_server:pick(P, Service, random)),
    ?assertEqual({error, no_providers}, macula_routing_server:pick(P, <<"nobody">>, random)),
    ?assertEqual({error, {invalid_strategy, fastest}},
                 macula_routing_server:pick(P, Service, fastest)),
    ?assertEqual({error, {invalid_strategy, "random"}},
                 macula_routing_server:pick(P, Service, "random")),
    ?assertEqual({error, {invalid_service_id, "s"}},
                 macula_routing_server:pick(P, "s", random)),
    ?assertEqual({error, {invalid_node_id, 42}},
                 macula_routing_server:report_failure(P, Service, 42)),
    %% Through a raw call too (another process's view of the server).
    ?assertEqual({error, no_providers}, gen_server:call(P, {pick, Service, nearest})).

pick_needs_the_network_test() ->
    P = start(#{}),
    try
        ?assertEqual({error, not_networked}, macula_routing_server:pick(P, <<"s">>, random)),
        ?assertEqual({error, not_networked},
                     macula_routing_server:report_failure(P, <<"s">>, <<"a">>))
    after
        stop(P)
    end.

%% Alone, a miss asks no one: the caller gets the old `{ok, []}', and the failure is counted
%% (and logged), so that it is not mistaken for a service nobody provides.
a_lookup_nobody_answered_is_counted(P) ->
    #{lookup_failures := Before, lookups := Lookups} = macula_routing_server:stats(P),
    ?assertEqual({ok, []}, macula_routing_server:find_value(P, <<"asked no one">>, 20)),
    ?assertMatch(#{lookup_failures := F, lookups := L} when F =:= Before + 1 andalso L =:= Lookups + 1,
                 macula_routing_server:stats(P)).

subscriptions_are_checked(P) ->
    ?assertEqual({error, {invalid_event_kinds, [everything]}},
                 macula_routing_server:subscribe(P, [everything])),
    ?assertEqual({error, {invalid_event_kinds, []}}, macula_routing_server:subscribe(P, [])),
    ?assertEqual(ok, macula_routing_server:subscribe(P, [lookups])),
    %% Alone, a miss runs a lookup with nobody to ask: its event still comes.
    {ok, []} = macula_routing_server:find_value(P, <<"nobody has it">>, 20),
    receive
        {macula_dht_event, {lookup, #{kind := find_value, providers := 0, timed_out := false}}} -> ok
    after 2000 ->
        error(no_lookup_event)
    end,
    ?assertEqual(ok, macula_routing_server:unsubscribe(P)),
    {ok, []} = macula_routing_server:find_value(P, <<"nobody has it either">>, 20),
    receive
        {macula_dht_event, Late} -> error({event_after_unsubscribe, Late})
    after 200 ->
        ok
    end.

%% A stopped server has given its port back: a restart binds the same one at once.
restart_on_the_same_port_test() ->
    P1 = start(#{listen => {?LOOPBACK, 0}}),
    {ok, {_, Port}} = macula_routing_server:address(P1),
    stop(P1),
    P2 = start(#{listen => {?LOOPBACK, Port}}),
    try
        ?assertEqual({ok, {?LOOPBACK, Port}}, macula_routing_server:address(P2))
    after
        stop(P2)
    end.
