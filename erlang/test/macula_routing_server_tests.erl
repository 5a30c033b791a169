%% @doc EUnit tests of macula_routing_server: every function and raw message of the
%% compatibility contract, bad input (which must never lose what is stored), limits and expiry.
-module(macula_routing_server_tests).

-include_lib("eunit/include/eunit.hrl").

-define(LOCAL_ID, <<100:256>>).
-define(KEY, <<"service-key">>).

%%--------------------------------------------------------------------------------------------
%% Fixtures: a fresh server per test, stopped by its pid whatever the outcome
%%--------------------------------------------------------------------------------------------

start(Config) ->
    catch gen_server:stop(macula_routing_server),
    {ok, Pid} = macula_routing_server:start_link(?LOCAL_ID, Config),
    unlink(Pid),
    Pid.

stop(Pid) ->
    catch sys:resume(Pid),
    catch gen_server:stop(Pid).

server_test_() ->
    with_server(#{k => 20, alpha => 3}, [
        fun registers_locally/1,
        fun add_node_and_find_closest/1,
        fun add_node_replaces_known_id/1,
        fun self_is_ignored/1,
        fun remove_node/1,
        fun routing_table_is_a_map/1,
        fun store_local_order/1,
        fun atom_and_binary_node_id_are_one_field/1,
        fun provider_without_node_id_is_always_added/1,
        fun values_come_back_exactly/1,
        fun store_is_an_upsert/1,
        fun hot_reads_see_every_write/1,
        fun delete_local/1,
        fun get_all_keys/1,
        fun find_value/1,
        fun find_value_local/1,
        fun handle_message_find_node/1,
        fun handle_message_store_and_find_value/1,
        fun handle_message_garbage/1,
        fun handle_message_async/1,
        fun raw_messages/1,
        fun unknown_requests/1,
        fun bad_input_keeps_what_is_stored/1,
        fun reads_and_writes_bypass_the_mailbox/1,
        fun stats_counts/1,
        fun registry_publish_query_remove/1
    ]).

with_server(Config, Tests) ->
    {foreach, fun() -> start(Config) end, fun stop/1,
     [fun(Pid) -> {atom_to_list(element(2, erlang:fun_info(T, name))), fun() -> T(Pid) end} end
      || T <- Tests]}.

%%--------------------------------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------------------------------

%% Ids that each fall in a bucket of their own (bucket 255 - N), so k never limits a test.
nid(N) -> <<(100 bxor (1 bsl N)):256>>.

node_info(N) -> #{node_id => nid(N), address => {{127, 0, 0, 1}, 9000 + N}}.

provider(Nid) -> provider(Nid, #{}).
provider(Nid, Extra) ->
    maps:merge(#{node_id => Nid, endpoint => <<"https://", Nid/binary, ":9443">>,
                 metadata => #{version => <<"1.0">>}}, Extra).

ids(Nodes) -> [maps:get(node_id, N) || N <- Nodes].

by_distance(Target, Ids) ->
    lists:sort(fun(A, B) -> macula_routing_nodeid:distance(Target, A) =<
                            macula_routing_nodeid:distance(Target, B) end, Ids).

%% Everything the server holds, to compare before and after bad input.
snapshot(Pid) ->
    {ok, Keys} = macula_routing_server:get_all_keys(Pid),
    {lists:sort([{K, macula_routing_server:get_local(Pid, K)} || K <- Keys]),
     macula_routing_server:size(Pid),
     lists:sort(ids(macula_routing_server:find_closest(Pid, <<0:256>>, 1000)))}.

%%--------------------------------------------------------------------------------------------
%% Routing table
%%--------------------------------------------------------------------------------------------

registers_locally(Pid) ->
    ?assertEqual(Pid, whereis(macula_routing_server)),
    ?assertEqual({error, {already_started, Pid}},
                 macula_routing_server:start_link(?LOCAL_ID, #{})).

add_node_and_find_closest(Pid) ->
    Ns = lists:seq(1, 60),
    [?assertEqual(ok, macula_routing_server:add_node(Pid, node_info(N))) || N <- Ns],
    ?assertEqual(60, macula_routing_server:size(Pid)),
    Target = <<7:256>>,
    Expected = lists:sublist(by_distance(Target, [nid(N) || N <- Ns]), 5),
    Closest = macula_routing_server:find_closest(Pid, Target, 5),
    ?assertEqual(Expected, ids(Closest)),
    %% K is independent of the configured k (20)
    ?assertEqual(30, length(macula_routing_server:find_closest(Pid, Target, 30))),
    ?assertEqual([], macula_routing_server:find_closest(Pid, Target, 0)),
    %% the registered name is as good as the pid
    ?assertEqual(ids(Closest), ids(macula_routing_server:find_closest(macula_routing_server, Target, 5))),
    [First | _] = Closest,
    [N0] = [N || N <- Ns, nid(N) =:= maps:get(node_id, First)],
    ?assertEqual({{127, 0, 0, 1}, 9000 + N0}, maps:get(address, First)),
    ?assert(is_integer(maps:get(last_seen, First))).

add_node_replaces_known_id(Pid) ->
    ok = macula_routing_server:add_node(Pid, node_info(1)),
    New = #{node_id => nid(1), endpoint => <<"https://n1:9443">>, last_seen => 42, zone => eu},
    ok = macula_routing_server:add_node(Pid, New),
    ?assertEqual(1, macula_routing_server:size(Pid)),
    ?assertEqual([New], macula_routing_server:find_closest(Pid, nid(1), 3)),
    %% a short binary id is normalised (hashed) but kept and returned as given
    ok = macula_routing_server:add_node(Pid, #{node_id => <<"node-a">>, endpoint => <<"https://a:1">>}),
    [#{node_id := <<"node-a">>} | _] =
        macula_routing_server:find_closest(Pid, macula_routing_nodeid:normalize(<<"node-a">>), 1).

self_is_ignored(Pid) ->
    ok = macula_routing_server:add_node(Pid, #{node_id => ?LOCAL_ID}),
    ?assertEqual(0, macula_routing_server:size(Pid)).

remove_node(Pid) ->
    [ok = macula_routing_server:add_node(Pid, node_info(N)) || N <- [1, 2, 3]],
    ?assertEqual(ok, macula_routing_server:remove_node(Pid, nid(2))),
    ?assertEqual(ok, macula_routing_server:remove_node(Pid, nid(99))),
    ?assertEqual(2, macula_routing_server:size(Pid)),
    ?assertEqual(lists:sort([nid(1), nid(3)]),
                 lists:sort(ids(macula_routing_server:find_closest(Pid, <<0:256>>, 10)))).

routing_table_is_a_map(Pid) ->
    [ok = macula_routing_server:add_node(Pid, node_info(N)) || N <- [1, 2, 3]],
    Table = macula_routing_server:get_routing_table(Pid),
    ?assert(is_map(Table)),
    ?assertEqual(3, maps:get(size, Table)),
    ?assertEqual(?LOCAL_ID, maps:get(local_node_id, Table)),
    InBuckets = lists:append(maps:values(maps:get(buckets, Table))),
    ?assertEqual(lists:sort([nid(N) || N <- [1, 2, 3]]), lists:sort(ids(InBuckets))).

full_bucket_test_() ->
    with_server(#{k => 2}, [fun full_bucket_keeps_newcomer_aside/1]).

full_bucket_keeps_newcomer_aside(Pid) ->
    %% the local id's top bit is 0, so ids with the top bit set all fall in bucket 0
    [A, B, C] = [<<1:1, N:255>> || N <- [1, 2, 3]],
    [ok = macula_routing_server:add_node(Pid, #{node_id => Id}) || Id <- [A, B, C]],
    ?assertEqual(2, macula_routing_server:size(Pid)),
    ?assertEqual(lists:sort([A, B]), lists:sort(ids(macula_routing_server:find_closest(Pid, C, 5)))),
    %% when a slot frees up, the waiting newcomer moves in
    ok = macula_routing_server:remove_node(Pid, A),
    ?assertEqual(lists:sort([B, C]), lists:sort(ids(macula_routing_server:find_closest(Pid, C, 5)))).

%%--------------------------------------------------------------------------------------------
%% Provider store
%%--------------------------------------------------------------------------------------------

store_local_order(Pid) ->
    ?assertEqual(not_found, macula_routing_server:get_local(Pid, ?KEY)),
    P1 = provider(<<"n1">>), P2 = provider(<<"n2">>), P3 = provider(<<"n3">>),
    [ok = macula_routing_server:store_local(Pid, ?KEY, P) || P <- [P1, P2, P3]],
    ?assertEqual({ok, [P3, P2, P1]}, macula_routing_server:get_local(Pid, ?KEY)),
    %% a known node_id is replaced in place, keeping its position
    P2b = provider(<<"n2">>, #{metadata => #{version => <<"2.0">>}}),
    ok = macula_routing_server:store_local(Pid, ?KEY, P2b),
    ?assertEqual({ok, [P3, P2b, P1]}, macula_routing_server:get_local(Pid, ?KEY)).

atom_and_binary_node_id_are_one_field(Pid) ->
    Atom = provider(<<"n1">>),
    Bin = #{<<"node_id">> => <<"n1">>, <<"endpoint">> => <<"https://other:1">>},
    ok = macula_routing_server:store_local(Pid, ?KEY, provider(<<"n0">>)),
    ok = macula_routing_server:store_local(Pid, ?KEY, Atom),
    ok = macula_routing_server:store_local(Pid, ?KEY, Bin),
    ?assertEqual({ok, [Bin, provider(<<"n0">>)]}, macula_routing_server:get_local(Pid, ?KEY)),
    ok = macula_routing_server:delete_local(Pid, ?KEY, <<"n1">>),
    ?assertEqual({ok, [provider(<<"n0">>)]}, macula_routing_server:get_local(Pid, ?KEY)).

provider_without_node_id_is_always_added(Pid) ->
    P = #{endpoint => <<"https://anon:1">>},
    ok = macula_routing_server:store_local(Pid, ?KEY, P),
    ok = macula_routing_server:store_local(Pid, ?KEY, P),
    ?assertEqual({ok, [P, P]}, macula_routing_server:get_local(Pid, ?KEY)).

values_come_back_exactly(Pid) ->
    P = #{node_id => <<"n1">>, endpoint => <<"https://h:1">>, ttl => 300,
          advertised_at => 1764160000000, weight => 0.25, neg => -7, big => 1 bsl 70,
          tags => [a, <<"b">>, {c, "d"}], nested => #{deep => #{deeper => [1.5, #{}]}},
          <<"binary_key">> => <<0, 255>>, pid => self(), ref => make_ref()},
    ok = macula_routing_server:store_local(Pid, ?KEY, P),
    {ok, [Got]} = macula_routing_server:get_local(Pid, ?KEY),
    ?assert(Got =:= P).

store_is_an_upsert(Pid) ->
    ok = macula_routing_server:store(Pid, ?KEY, provider(<<"n1">>)),
    ok = macula_routing_server:store(Pid, ?KEY, provider(<<"n1">>, #{x => 1})),
    ?assertEqual({ok, [provider(<<"n1">>, #{x => 1})]}, macula_routing_server:get_local(Pid, ?KEY)).

%% Repeated reads of a key are served from decoded copies; every write must still show.
hot_reads_see_every_write(Pid) ->
    S = macula_routing_server,
    Read = fun() -> [S:get_local(Pid, ?KEY) || _ <- lists:seq(1, 5)] end,
    P1 = provider(<<"n1">>), P2 = provider(<<"n2">>), P2b = provider(<<"n2">>, #{v => 2}),
    ok = S:store_local(Pid, ?KEY, P1),
    ?assertEqual(lists:duplicate(5, {ok, [P1]}), Read()),
    ok = S:store_local(Pid, ?KEY, P2),
    ?assertEqual(lists:duplicate(5, {ok, [P2, P1]}), Read()),
    ok = S:store_local(Pid, ?KEY, P2b),
    ?assertEqual(lists:duplicate(5, {ok, [P2b, P1]}), Read()),
    ok = gen_server:call(Pid, {delete_local, ?KEY, <<"n1">>}),
    ?assertEqual(lists:duplicate(5, {ok, [P2b]}), Read()),
    ?assertEqual({ok, [P2b]}, S:find_value_local(?KEY, 20)),
    ok = S:delete_local(Pid, ?KEY, <<"n2">>),
    ?assertEqual(lists:duplicate(5, not_found), Read()).

delete_local(Pid) ->
    P1 = provider(<<"n1">>), P2 = provider(<<"n2">>),
    ok = macula_routing_server:store_local(Pid, ?KEY, P1),
    ok = macula_routing_server:store_local(Pid, ?KEY, P2),
    ?assertEqual(ok, macula_routing_server:delete_local(Pid, ?KEY, <<"n1">>)),
    ?assertEqual({ok, [P2]}, macula_routing_server:get_local(Pid, ?KEY)),
    ?assertEqual(ok, macula_routing_server:delete_local(Pid, ?KEY, <<"absent">>)),
    ?assertEqual(ok, macula_routing_server:delete_local(Pid, <<"no-such-key">>, <<"n2">>)),
    ?assertEqual(ok, macula_routing_server:delete_local(Pid, ?KEY, <<"n2">>)),
    ?assertEqual(not_found, macula_routing_server:get_local(Pid, ?KEY)),
    ?assertEqual({ok, []}, macula_routing_server:get_all_keys(Pid)).

get_all_keys(Pid) ->
    Keys = [<<"k", N>> || N <- lists:seq(1, 20)],
    [ok = macula_routing_server:store_local(Pid, K, provider(<<"n">>)) || K <- Keys],
    {ok, Got} = macula_routing_server:get_all_keys(Pid),
    ?assertEqual(lists:sort(Keys), lists:sort(Got)).

find_value(Pid) ->
    ?assertEqual({ok, []}, macula_routing_server:find_value(Pid, ?KEY, 20)),
    ok = macula_routing_server:store_local(Pid, ?KEY, provider(<<"n1">>)),
    ?assertEqual({ok, [provider(<<"n1">>)]}, macula_routing_server:find_value(Pid, ?KEY, 20)).

find_value_local(Pid) ->
    ?assertEqual({error, not_found}, macula_routing_server:find_value_local(?KEY, 20)),
    ok = macula_routing_server:store_local(Pid, ?KEY, provider(<<"n1">>)),
    ?assertEqual({ok, [provider(<<"n1">>)]}, macula_routing_server:find_value_local(?KEY, 20)),
    ?assertEqual({error, not_found}, macula_routing_server:find_value_local(not_a_key, 20)).

find_value_local_without_server_test() ->
    catch gen_server:stop(macula_routing_server),
    ?assertEqual({error, not_found}, macula_routing_server:find_value_local(?KEY, 20)).

%%--------------------------------------------------------------------------------------------
%% DHT messages
%%--------------------------------------------------------------------------------------------

handle_message_find_node(Pid) ->
    [ok = macula_routing_server:add_node(Pid, node_info(N)) || N <- lists:seq(1, 30)],
    Target = <<5:256>>,
    Expected = lists:sublist(by_distance(Target, [nid(N) || N <- lists:seq(1, 30)]), 20),
    Forms = [#{type => find_node, target => Target},
             #{<<"type">> => <<"find_node">>, <<"target">> => Target},
             #{<<"target">> => Target}],
    [begin
         Reply = macula_routing_server:handle_message(Pid, Msg),
         ?assertMatch(#{type := find_node_reply, nodes := _}, Reply),
         ?assertEqual(Expected, ids(maps:get(nodes, Reply)))
     end || Msg <- Forms].

handle_message_store_and_find_value(Pid) ->
    ok = macula_routing_server:add_node(Pid, node_info(1)),
    P = provider(<<"n1">>),
    ?assertEqual(#{type => store_reply, result => ok},
                 macula_routing_server:handle_message(Pid, #{type => store, key => ?KEY, value => P})),
    ?assertEqual(#{type => store_reply, result => ok},
                 macula_routing_server:handle_message(
                   Pid, #{<<"type">> => <<"store">>, <<"key">> => <<"k2">>, <<"value">> => P})),
    ?assertEqual({ok, [P]}, macula_routing_server:get_local(Pid, <<"k2">>)),
    Hit = #{type => find_value_reply, result => value, value => [P]},
    ?assertEqual(Hit, macula_routing_server:handle_message(Pid, #{type => find_value, key => ?KEY})),
    ?assertEqual(Hit, macula_routing_server:handle_message(Pid, #{<<"key">> => ?KEY})),
    Miss = macula_routing_server:handle_message(Pid, #{type => find_value, key => <<"missing">>}),
    ?assertMatch(#{type := find_value_reply, result := nodes, nodes := [_]}, Miss),
    ?assertEqual([nid(1)], ids(maps:get(nodes, Miss))).

handle_message_garbage(Pid) ->
    ok = macula_routing_server:store_local(Pid, ?KEY, provider(<<"n1">>)),
    Before = snapshot(Pid),
    Garbage = [42, "find_node", {find_node, <<1:256>>}, #{}, #{type => ping},
               #{type => <<"nonsense">>}, #{type => find_node, target => 7},
               #{type => store, key => 1, value => #{}}, #{type => store, key => ?KEY, value => not_a_map},
               #{type => find_value, key => [1, 2]}, #{<<"type">> => <<"store">>}],
    [?assertMatch(#{type := error, reason := _}, macula_routing_server:handle_message(Pid, G))
     || G <- Garbage],
    ?assertEqual(#{type => error, reason => unknown_message},
                 macula_routing_server:handle_message(Pid, 42)),
    ?assert(is_process_alive(Pid)),
    ?assertEqual(Before, snapshot(Pid)).

handle_message_async(Pid) ->
    P = provider(<<"n1">>),
    ?assertEqual(ok, macula_routing_server:handle_message_async(Pid, #{type => store, key => ?KEY, value => P})),
    ?assertEqual(ok, macula_routing_server:handle_message_async(Pid, garbage)),
    %% a call queues behind the cast, so the store has happened once it returns
    ?assertEqual({ok, [P]}, gen_server:call(Pid, {get_local, ?KEY})),
    ?assert(is_process_alive(Pid)).

raw_messages(Pid) ->
    P1 = provider(<<"n1">>), P2 = provider(<<"n2">>),
    ?assertEqual(ok, gen_server:call(Pid, {store_local, ?KEY, P1})),
    ok = gen_server:cast(Pid, {store, ?KEY, P2}),
    ?assertEqual({ok, [P2, P1]}, gen_server:call(Pid, {get_local, ?KEY})),
    ?assertEqual(ok, gen_server:call(Pid, {delete_local, ?KEY, <<"n2">>})),
    ?assertEqual({ok, [P1]}, gen_server:call(Pid, {get_local, ?KEY})),
    ?assertEqual({error, {invalid_provider, not_a_map}}, gen_server:call(Pid, {store_local, ?KEY, 7})),
    ok = gen_server:cast(Pid, {store, ?KEY, not_a_map}),
    ?assertEqual({ok, [P1]}, gen_server:call(Pid, {get_local, ?KEY})).

unknown_requests(Pid) ->
    ok = macula_routing_server:store_local(Pid, ?KEY, provider(<<"n1">>)),
    Before = snapshot(Pid),
    ?assertEqual({error, unknown_request}, gen_server:call(Pid, what_is_this)),
    ?assertEqual({error, unknown_request}, gen_server:call(Pid, {get_local})),
    ok = gen_server:cast(Pid, {what, is, this}),
    Pid ! {unexpected, info},
    Pid ! expire_typo,
    ?assertEqual({error, unknown_request}, gen_server:call(Pid, sync)),
    ?assert(is_process_alive(Pid)),
    ?assertEqual(Before, snapshot(Pid)).

%%--------------------------------------------------------------------------------------------
%% Bad input never loses what is stored
%%--------------------------------------------------------------------------------------------

bad_input_keeps_what_is_stored(Pid) ->
    [ok = macula_routing_server:add_node(Pid, node_info(N)) || N <- [1, 2, 3]],
    ok = macula_routing_server:store_local(Pid, ?KEY, provider(<<"n1">>)),
    ok = macula_routing_server:store_local(Pid, <<"other">>, provider(<<"n2">>, #{ttl => 60})),
    Before = snapshot(Pid),
    S = macula_routing_server,
    Cases = [
        {{error, {invalid_provider, not_a_map}}, S:store_local(Pid, ?KEY, not_a_map)},
        {{error, {invalid_provider, not_a_map}}, S:store_local(Pid, ?KEY, [{node_id, <<"n1">>}])},
        {{error, {invalid_provider, not_a_map}}, S:store(Pid, ?KEY, {provider, 1})},
        {{error, {invalid_key, not_a_binary}}, S:store_local(Pid, 'key', provider(<<"n1">>))},
        {{error, {invalid_key, not_a_binary}}, S:store_local(Pid, "key", provider(<<"n1">>))},
        {{error, {key_too_large, 2048, 1024}}, S:store_local(Pid, binary:copy(<<"k">>, 2048), provider(<<"n1">>))},
        {{error, {invalid_provider, invalid_node_id}}, S:store_local(Pid, ?KEY, #{node_id => 42})},
        {{error, {invalid_provider, invalid_node_id}}, S:store_local(Pid, ?KEY, #{node_id => binary:copy(<<1>>, 300)})},
        {{error, {invalid_provider, invalid_ttl}}, S:store_local(Pid, ?KEY, provider(<<"n1">>, #{ttl => -1}))},
        {{error, {invalid_provider, invalid_ttl}}, S:store_local(Pid, ?KEY, provider(<<"n1">>, #{ttl => 0}))},
        {{error, {invalid_provider, invalid_ttl}}, S:store_local(Pid, ?KEY, provider(<<"n1">>, #{ttl => <<"300">>}))},
        {{error, {invalid_key, not_a_binary}}, S:get_local(Pid, 42)},
        {{error, {invalid_key, not_a_binary}}, S:delete_local(Pid, 42, <<"n1">>)},
        {{error, {invalid_node_id, not_a_binary}}, S:delete_local(Pid, ?KEY, n1)},
        {{error, {invalid_node_info, not_a_map}}, S:add_node(Pid, <<1:256>>)},
        {{error, {invalid_node_info, missing_node_id}}, S:add_node(Pid, #{address => {{127, 0, 0, 1}, 1}})},
        {{error, {invalid_node_info, invalid_node_id}}, S:add_node(Pid, #{node_id => 12})},
        {{error, {invalid_node_id, not_a_binary}}, S:remove_node(Pid, 12)},
        {{error, {invalid_target, not_a_binary}}, S:find_closest(Pid, 12, 3)},
        {{error, {invalid_count, -1}}, S:find_closest(Pid, <<1:256>>, -1)},
        {{error, {invalid_count, many}}, S:find_closest(Pid, <<1:256>>, many)},
        {{error, {invalid_key, not_a_binary}}, S:find_value(Pid, {k}, 20)}
    ],
    [?assertEqual(Expected, Got) || {Expected, Got} <- Cases],
    %% an oversized value
    Huge = provider(<<"n1">>, #{blob => binary:copy(<<0>>, 100000)}),
    ?assertMatch({error, {record_too_large, _, 65536}}, S:store_local(Pid, ?KEY, Huge)),
    ?assertMatch(#{type := error}, S:handle_message(Pid, #{type => store, key => ?KEY, value => Huge})),
    %% the NIF itself refuses a bad handle with badarg, not a crash
    ?assertError(badarg, macula_dht_nif:store_get(not_a_handle, ?KEY)),
    ?assertError(badarg, macula_dht_nif:table_closest(make_ref(), <<1:256>>, 3)),
    ?assert(is_process_alive(Pid)),
    ?assertEqual(Before, snapshot(Pid)).

start_link_refuses_bad_config_test() ->
    catch gen_server:stop(macula_routing_server),
    ?assertEqual({error, {invalid_config, k, 0}}, macula_routing_server:start_link(?LOCAL_ID, #{k => 0})),
    ?assertEqual({error, {invalid_config, alpha, three}},
                 macula_routing_server:start_link(?LOCAL_ID, #{alpha => three})),
    ?assertEqual({error, {invalid_config, config, [{k, 20}]}},
                 macula_routing_server:start_link(?LOCAL_ID, [{k, 20}])),
    ?assertEqual({error, {invalid_node_id, 100}}, macula_routing_server:start_link(100, #{})),
    ?assertEqual(undefined, whereis(macula_routing_server)),
    %% unknown keys are ignored
    Pid = start(#{k => 20, alpha => 3, whatever => true}),
    stop(Pid).

%%--------------------------------------------------------------------------------------------
%% Limits and expiry
%%--------------------------------------------------------------------------------------------

limits_test_() ->
    with_server(#{max_keys => 2, max_providers_per_key => 2}, [fun limits/1]).

limits(Pid) ->
    S = macula_routing_server,
    ok = S:store_local(Pid, <<"a">>, provider(<<"n1">>)),
    ok = S:store_local(Pid, <<"b">>, provider(<<"n1">>)),
    ?assertEqual({error, {limit, max_keys, 2}}, S:store_local(Pid, <<"c">>, provider(<<"n1">>))),
    ok = S:store_local(Pid, <<"a">>, provider(<<"n2">>)),
    ?assertEqual({error, {limit, max_providers_per_key, 2}}, S:store_local(Pid, <<"a">>, provider(<<"n3">>))),
    %% a refresh of a stored provider is accepted at both limits
    ?assertEqual(ok, S:store_local(Pid, <<"a">>, provider(<<"n1">>, #{v => 2}))),
    ?assertEqual({ok, [provider(<<"n2">>), provider(<<"n1">>, #{v => 2})]}, S:get_local(Pid, <<"a">>)),
    ?assertEqual(not_found, S:get_local(Pid, <<"c">>)),
    ?assertMatch(#{rejected := 2, keys := 2, records := 3}, S:stats(Pid)).

expiry_test_() ->
    {timeout, 30, with_server(#{default_ttl => 1, expire_interval_ms => 50}, [fun expiry/1])}.

expiry(Pid) ->
    S = macula_routing_server,
    ok = S:store_local(Pid, <<"short">>, provider(<<"n1">>, #{ttl => 1})),
    ok = S:store_local(Pid, <<"short">>, provider(<<"kept">>, #{ttl => 60})),
    ok = S:store_local(Pid, <<"default">>, provider(<<"n2">>)),
    ok = S:store_local(Pid, <<"refreshed">>, provider(<<"n3">>, #{ttl => 1})),
    %% read often enough to be served from decoded copies, which must not outlive a record
    HotReads = fun() -> [S:get_local(Pid, K) || K <- [<<"short">>, <<"default">>], _ <- [1, 2, 3]] end,
    _ = HotReads(),
    timer:sleep(600),
    ok = S:store_local(Pid, <<"refreshed">>, provider(<<"n3">>, #{ttl => 1})),
    _ = HotReads(),
    timer:sleep(600),
    %% each record went ttl seconds after it was last stored
    ?assertEqual({ok, [provider(<<"kept">>, #{ttl => 60})]}, S:get_local(Pid, <<"short">>)),
    ?assertEqual(not_found, S:get_local(Pid, <<"default">>)),
    ?assertEqual({ok, [provider(<<"n3">>, #{ttl => 1})]}, S:get_local(Pid, <<"refreshed">>)),
    timer:sleep(600),
    ?assertEqual(not_found, S:get_local(Pid, <<"refreshed">>)),
    %% and the timer purged them from memory, not just from view
    timer:sleep(200),
    ?assertMatch(#{keys := 1, records := 1, expired := 3}, S:stats(Pid)),
    ?assertEqual({ok, [<<"short">>]}, S:get_all_keys(Pid)).

%%--------------------------------------------------------------------------------------------
%% Reads and writes from the caller's process
%%--------------------------------------------------------------------------------------------

reads_and_writes_bypass_the_mailbox(Pid) ->
    S = macula_routing_server,
    ok = S:add_node(Pid, node_info(1)),
    ok = sys:suspend(Pid),
    %% the server cannot answer a single message now, yet every API call works
    ok = S:store_local(Pid, ?KEY, provider(<<"n1">>)),
    ?assertEqual({ok, [provider(<<"n1">>)]}, S:get_local(Pid, ?KEY)),
    ?assertEqual({ok, [provider(<<"n1">>)]}, S:find_value(Pid, ?KEY, 20)),
    ?assertEqual({ok, [provider(<<"n1">>)]}, S:find_value_local(?KEY, 20)),
    ?assertEqual([nid(1)], ids(S:find_closest(Pid, nid(1), 1))),
    ?assertEqual(1, S:size(Pid)),
    ok = sys:resume(Pid).

stats_counts(Pid) ->
    ok = macula_routing_server:add_node(Pid, node_info(1)),
    ok = macula_routing_server:store_local(Pid, ?KEY, provider(<<"n1">>)),
    Stats = macula_routing_server:stats(Pid),
    ?assertMatch(#{keys := 1, records := 1, nodes := 1, expired := 0, rejected := 0}, Stats),
    ?assert(maps:get(bytes, Stats) > 0),
    ?assert(maps:get(nif_allocated_bytes, Stats) > 0).

%%--------------------------------------------------------------------------------------------
%% A dead server is gone for its callers too
%%--------------------------------------------------------------------------------------------

stopped_server_test() ->
    Pid = start(#{}),
    ok = macula_routing_server:store_local(Pid, ?KEY, provider(<<"n1">>)),
    ok = gen_server:stop(Pid),
    ?assertExit({noproc, _}, macula_routing_server:get_local(Pid, ?KEY)),
    ?assertEqual({error, not_found}, macula_routing_server:find_value_local(?KEY, 20)).

killed_server_closes_its_handle_test() ->
    Pid = start(#{}),
    ok = macula_routing_server:store_local(Pid, ?KEY, provider(<<"n1">>)),
    Ref = monitor(process, Pid),
    exit(Pid, kill),
    receive {'DOWN', Ref, process, Pid, killed} -> ok end,
    ?assertExit({noproc, _}, wait_closed(fun() -> macula_routing_server:get_local(macula_routing_server, ?KEY) end, 50)),
    %% a new server starts clean
    Pid2 = start(#{}),
    ?assertEqual(not_found, macula_routing_server:get_local(Pid2, ?KEY)),
    stop(Pid2).

%% The NIF learns of the death through a monitor, which may land a moment after 'DOWN'.
wait_closed(Fun, 0) -> Fun();
wait_closed(Fun, N) ->
    try Fun() of
        _ -> timer:sleep(10), wait_closed(Fun, N - 1)
    catch exit:{noproc, _} -> Fun()
    end.

%%--------------------------------------------------------------------------------------------
%% The service registry over this server
%%--------------------------------------------------------------------------------------------

registry_publish_query_remove(_Pid) ->
    R = macula_service_registry,
    Service = <<"test.calculator">>,
    P1 = #{node_id => <<"node-1">>, endpoint => <<"https://node-1:9443">>, metadata => #{}},
    P2 = #{node_id => <<"node-2">>, endpoint => <<"https://node-2:9443">>, metadata => #{}},
    ?assertEqual(ok, R:publish_to_dht(macula_routing_server, Service, P1, 300, 20)),
    ?assertEqual(ok, R:publish_to_dht(macula_routing_server, Service, P2, 300, 20)),
    {ok, Found} = R:query_dht_for_service(macula_routing_server, Service, 20),
    ?assertEqual([<<"node-2">>, <<"node-1">>], [maps:get(node_id, P) || P <- Found]),
    [?assertMatch(#{ttl := 300, advertised_at := _}, P) || P <- Found],
    ?assertEqual({ok, Found}, macula_routing_server:get_local(
                                macula_routing_server, crypto:hash(sha256, Service))),
    ?assertEqual(ok, R:remove_from_dht(macula_routing_server, Service, <<"node-1">>)),
    {ok, [Left]} = R:query_dht_for_service(macula_routing_server, Service, 20),
    ?assertEqual(<<"node-2">>, maps:get(node_id, Left)),
    ?assertEqual({ok, []}, R:query_dht_for_service(macula_routing_server, <<"no.such.service">>, 20)).
