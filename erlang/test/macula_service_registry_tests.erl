-module(macula_service_registry_tests).

-include_lib("eunit/include/eunit.hrl").

-define(M, macula_service_registry).

handler(Tag) -> fun(Args) -> {Tag, Args} end.
providers() -> [#{node_id => <<1:256>>, endpoint => <<"https://a:9443">>}].

%%--------------------------------------------------------------------
%% Construction
%%--------------------------------------------------------------------

new_test_() ->
    [?_assertEqual(?M:new(#{}), ?M:new()),
     ?_assertEqual(?M:new(), ?M:new(#{unknown => 1, <<"cache_ttl">> => 0})),
     ?_assertEqual(?M:new(#{default_ttl => 300, cache_ttl => 60, service_ttl => 300}),
                   ?M:new()),
     ?_assertNotEqual(?M:new(), ?M:new(#{cache_ttl => 0})),
     ?_assertError(badarg, ?M:new(#{cache_ttl => -1})),
     ?_assertError(badarg, ?M:new(#{service_ttl => "300"})),
     ?_assertError(badarg, ?M:new(#{default_ttl => 1.5})),
     ?_assertError(function_clause, ?M:new([{cache_ttl, 1}]))].

%% The old registry's keys, which existing callers and tests match on, with the old defaults;
%% the keys of `pick/3' and `report_failure/3' come beside them.
old_keys_test_() ->
    R = ?M:new(),
    Old = [local_services, cache, subscriber_cache, default_ttl, cache_ttl, service_ttl],
    [?_test(begin #{cache := _} = ?M:new() end),
     ?_test(begin
                #{cache := #{}, subscriber_cache := #{}, local_services := #{}} = ?M:new(#{})
            end),
     ?_assertMatch(#{default_ttl := 300, cache_ttl := 60, service_ttl := 300}, R),
     ?_assertMatch(#{default_ttl := 10, cache_ttl := 20, service_ttl := 30},
                   ?M:new(#{default_ttl => 10, cache_ttl => 20, service_ttl => 30})),
     ?_assertEqual(lists:sort(Old ++ [dht, rtt, failure_backoff_ms, rotations, failures]),
                   lists:sort(maps:keys(R))),
     ?_assertEqual([], [Key || Key <- [services, subscribers], is_map_key(Key, R)])].

%% Each table holds its entries under its old key: one per id, gone when removed.
entries_under_old_keys_test() ->
    R0 = ?M:new(),
    R1 = ?M:cache_subscribers(?M:cache_service(?M:advertise_local(R0, <<"l">>, handler(l), #{}),
                                               <<"c">>, providers(), 300),
                              <<"s">>, providers(), 300),
    #{local_services := Local, cache := Cache, subscriber_cache := Subscribers} = R1,
    ?assertEqual({[<<"l">>], [<<"c">>], [<<"s">>]},
                 {maps:keys(Local), maps:keys(Cache), maps:keys(Subscribers)}),
    R2 = ?M:clear_subscriber_cache(?M:clear_cache(?M:unadvertise_local(R1, <<"l">>))),
    ?assertMatch(#{local_services := Empty, cache := Empty, subscriber_cache := Empty}
                   when Empty =:= #{}, R2).

%%--------------------------------------------------------------------
%% Local services
%%--------------------------------------------------------------------

local_services_test_() ->
    H1 = handler(one),
    H2 = handler(two),
    R1 = ?M:advertise_local(?M:new(), <<"svc.b">>, H1, #{version => 1}),
    R2 = ?M:advertise_local(R1, <<"svc.a">>, H2, #{}),
    [?_assertEqual([], ?M:list_local_services(?M:new())),
     ?_assertEqual(not_found, ?M:get_local_handler(?M:new(), <<"svc.a">>)),
     ?_assertEqual({ok, H1}, ?M:get_local_handler(R2, <<"svc.b">>)),
     ?_assertEqual({ok, H2}, ?M:get_local_handler(R2, <<"svc.a">>)),
     ?_assertEqual([<<"svc.a">>, <<"svc.b">>], ?M:list_local_services(R2)),
     ?_assertEqual([<<"svc.a">>],
                   ?M:list_local_services(?M:unadvertise_local(R2, <<"svc.b">>))),
     ?_assertEqual(not_found,
                   ?M:get_local_handler(?M:unadvertise_local(R2, <<"svc.b">>), <<"svc.b">>)),
     ?_assertEqual(R2, ?M:unadvertise_local(R2, <<"svc.none">>)),
     ?_assertEqual({ok, H2},
                   ?M:get_local_handler(?M:advertise_local(R2, <<"svc.b">>, H2, #{}),
                                        <<"svc.b">>)),
     ?_assertEqual([<<"svc.a">>, <<"svc.b">>],
                   ?M:list_local_services(?M:advertise_local(R2, <<"svc.b">>, H2, #{}))),
     ?_assertError(function_clause, ?M:advertise_local(R1, "svc.c", H1, #{})),
     ?_assertError(function_clause, ?M:advertise_local(R1, <<"svc.c">>, not_a_fun, #{})),
     ?_assertError(function_clause, ?M:advertise_local(R1, <<"svc.c">>, H1, []))].

prune_expired_local_services_test_() ->
    Advertise = fun(R0) ->
                        lists:foldl(fun(Id, R) -> ?M:advertise_local(R, Id, handler(Id), #{}) end,
                                    R0, [<<"x">>, <<"y">>, <<"z">>])
                end,
    Fresh = Advertise(?M:new()),
    {Pruned, Count} = ?M:prune_expired_local_services(Advertise(?M:new(#{service_ttl => 0}))),
    [?_assertEqual({Fresh, 0}, ?M:prune_expired_local_services(Fresh)),
     ?_assertEqual(3, Count),
     ?_assertEqual([], ?M:list_local_services(Pruned)),
     ?_assertEqual(not_found, ?M:get_local_handler(Pruned, <<"x">>)),
     ?_assertEqual({?M:new(), 0}, ?M:prune_expired_local_services(?M:new()))].

%%--------------------------------------------------------------------
%% The two caches follow the same rules; every test runs on both.
%%--------------------------------------------------------------------

-record(cache, {name, discover, put, prune, clear}).

caches() ->
    [#cache{name = cache,
            discover = fun ?M:discover_service/2, put = fun ?M:cache_service/4,
            prune = fun ?M:prune_expired/1, clear = fun ?M:clear_cache/1},
     #cache{name = subscriber_cache,
            discover = fun ?M:discover_subscribers/2, put = fun ?M:cache_subscribers/4,
            prune = fun ?M:prune_expired_subscribers/1, clear = fun ?M:clear_subscriber_cache/1}].

cache_test_() ->
    [{atom_to_list(C#cache.name) ++ " " ++ Title, fun() -> Test(C) end}
     || C <- caches(),
        {Title, Test} <- [{"miss, hit, replace", fun miss_hit_replace/1},
                          {"lifetime is min(TTL, cache_ttl)", fun lifetime_is_min/1},
                          {"expired entry misses and is dropped", fun expired_is_dropped/1},
                          {"prune counts expired entries", fun prune_counts/1},
                          {"clear empties", fun clear_empties/1},
                          {"bad input", fun cache_bad_input/1}]].

miss_hit_replace(#cache{discover = Discover, put = Put}) ->
    R0 = ?M:new(),
    ?assertEqual({cache_miss, R0}, Discover(R0, <<"t">>)),
    R1 = Put(R0, <<"t">>, providers(), 300),
    ?assertEqual({ok, providers(), R1}, Discover(R1, <<"t">>)),
    ?assertEqual({cache_miss, R1}, Discover(R1, <<"other">>)),
    R2 = Put(R1, <<"t">>, [], 300),
    ?assertEqual({ok, [], R2}, Discover(R2, <<"t">>)).

lifetime_is_min(#cache{discover = Discover, put = Put}) ->
    ZeroTTL = Put(?M:new(), <<"t">>, providers(), 0),
    ?assertMatch({cache_miss, _}, Discover(ZeroTTL, <<"t">>)),
    ZeroCacheTTL = Put(?M:new(#{cache_ttl => 0}), <<"t">>, providers(), 300),
    ?assertMatch({cache_miss, _}, Discover(ZeroCacheTTL, <<"t">>)),
    Long = Put(?M:new(#{cache_ttl => 3600}), <<"t">>, providers(), 3600),
    ?assertMatch({ok, _, _}, Discover(Long, <<"t">>)).

expired_is_dropped(#cache{discover = Discover, put = Put, prune = Prune}) ->
    R0 = ?M:new(),
    Expired = Put(Put(R0, <<"old">>, providers(), 0), <<"live">>, providers(), 300),
    {cache_miss, Dropped} = Discover(Expired, <<"old">>),
    ?assertEqual({Dropped, 0}, Prune(Dropped)),
    ?assertMatch({ok, _, Dropped}, Discover(Dropped, <<"live">>)).

prune_counts(#cache{discover = Discover, put = Put, prune = Prune}) ->
    R0 = ?M:new(),
    ?assertEqual({R0, 0}, Prune(R0)),
    R1 = lists:foldl(fun({Id, TTL}, R) -> Put(R, Id, providers(), TTL) end, R0,
                     [{<<"a">>, 0}, {<<"b">>, 300}, {<<"c">>, 0}]),
    {R2, Removed} = Prune(R1),
    ?assertEqual(2, Removed),
    ?assertMatch({ok, _, _}, Discover(R2, <<"b">>)),
    ?assertMatch({cache_miss, _}, Discover(R2, <<"a">>)),
    ?assertEqual({R2, 0}, Prune(R2)).

clear_empties(#cache{discover = Discover, put = Put, clear = Clear}) ->
    R1 = Put(Put(?M:new(), <<"a">>, providers(), 300), <<"b">>, providers(), 300),
    R2 = Clear(R1),
    ?assertMatch({cache_miss, _}, Discover(R2, <<"a">>)),
    ?assertMatch({cache_miss, _}, Discover(R2, <<"b">>)),
    ?assertEqual(Clear(?M:new()), R2).

cache_bad_input(#cache{put = Put}) ->
    R = ?M:new(),
    ?assertError(function_clause, Put(R, "t", providers(), 300)),
    ?assertError(function_clause, Put(R, <<"t">>, #{}, 300)),
    ?assertError(function_clause, Put(R, <<"t">>, providers(), -1)),
    ?assertError(function_clause, Put(R, <<"t">>, providers(), infinity)).

caches_are_independent_test() ->
    Id = <<"same.id">>,
    R = ?M:cache_subscribers(?M:cache_service(?M:new(), Id, [p], 300), Id, [s], 300),
    ?assertMatch({ok, [p], _}, ?M:discover_service(R, Id)),
    ?assertMatch({ok, [s], _}, ?M:discover_subscribers(R, Id)),
    ?assertMatch({ok, [s], _}, ?M:discover_subscribers(?M:clear_cache(R), Id)),
    ?assertMatch({ok, [p], _}, ?M:discover_service(?M:clear_subscriber_cache(R), Id)),
    Local = ?M:advertise_local(R, Id, handler(x), #{}),
    ?assertEqual([Id], ?M:list_local_services(?M:clear_cache(Local))).

force_refresh_test_() ->
    R = ?M:cache_service(?M:new(), <<"svc">>, providers(), 300),
    [?_assertEqual({cache_miss, R}, ?M:discover_service(R, <<"svc">>, #{force_refresh => true})),
     ?_assertEqual({ok, providers(), R},
                   ?M:discover_service(R, <<"svc">>, #{force_refresh => false})),
     ?_assertEqual({ok, providers(), R}, ?M:discover_service(R, <<"svc">>, #{})),
     ?_assertEqual({ok, providers(), R}, ?M:discover_service(R, <<"svc">>, #{other => 1})),
     ?_assertEqual({cache_miss, ?M:new()},
                   ?M:discover_service(?M:new(), <<"svc">>, #{force_refresh => true}))].

%% The one test that has to let time pass: a 1 s lifetime and a refresh.
one_second_lifetimes_test() ->
    R0 = ?M:new(#{service_ttl => 1, cache_ttl => 60}),
    R1 = ?M:advertise_local(?M:advertise_local(R0, <<"kept">>, handler(k), #{}),
                            <<"stale">>, handler(s), #{}),
    R2 = ?M:cache_service(R1, <<"svc">>, providers(), 1),
    ?assertMatch({ok, _, _}, ?M:discover_service(R2, <<"svc">>)),
    ?assertEqual({R2, 0}, ?M:prune_expired_local_services(R2)),
    timer:sleep(1000),
    ?assertMatch({cache_miss, _}, ?M:discover_service(R2, <<"svc">>)),
    Refreshed = ?M:advertise_local(R2, <<"kept">>, handler(k2), #{}),
    {R3, 1} = ?M:prune_expired_local_services(Refreshed),
    ?assertEqual([<<"kept">>], ?M:list_local_services(R3)).

%%--------------------------------------------------------------------
%% DHT helpers (the live server is covered by integration tests)
%%--------------------------------------------------------------------

service_key_test_() ->
    [?_assertEqual(binary:decode_hex(<<"ba7816bf8f01cfea414140de5dae2223"
                                       "b00361a396177a9cb410ff61f20015ad">>),
                   ?M:service_key(<<"abc">>)),
     ?_assertEqual(binary:decode_hex(<<"e3b0c44298fc1c149afbf4c8996fb924"
                                       "27ae41e4649b934ca495991b7852b855">>),
                   ?M:service_key(<<>>)),
     ?_assertEqual(32, byte_size(?M:service_key(<<"energy.home.get">>))),
     ?_assertError(function_clause, ?M:service_key("abc"))].

dead_pid() ->
    {Pid, Ref} = spawn_monitor(fun() -> ok end),
    receive {'DOWN', Ref, process, Pid, _} -> Pid end.

unavailable_dhts() ->
    [macula_service_registry_tests_no_such_process, dead_pid(), undefined, "dht", 42].

dht_not_available_test_() ->
    Provider = #{node_id => <<1:256>>, endpoint => <<"https://a:9443">>},
    [[?_assertEqual({error, dht_not_available},
                    ?M:publish_to_dht(Dht, <<"svc">>, Provider, 300, 20)),
      ?_assertEqual({error, dht_not_available}, ?M:query_dht_for_service(Dht, <<"svc">>, 20)),
      ?_assertEqual(ok, ?M:remove_from_dht(Dht, <<"svc">>, <<1:256>>))]
     || Dht <- unavailable_dhts()].

%% Validation comes first, whether or not a DHT is running.
dht_input_validation_test_() ->
    Dht = macula_service_registry_tests_no_such_process,
    [?_assertEqual({error, {invalid_service_id, "svc"}},
                   ?M:publish_to_dht(Dht, "svc", #{}, 300, 20)),
     ?_assertEqual({error, {invalid_service_id, svc}},
                   ?M:publish_to_dht(Dht, svc, not_a_map, 300, 20)),
     ?_assertEqual({error, {invalid_provider, [{node_id, <<1>>}]}},
                   ?M:publish_to_dht(Dht, <<"svc">>, [{node_id, <<1>>}], 300, 20)),
     ?_assertEqual({error, {invalid_ttl, -5}}, ?M:publish_to_dht(Dht, <<"svc">>, #{}, -5, 20)),
     ?_assertEqual({error, {invalid_ttl, 1.0}}, ?M:publish_to_dht(Dht, <<"svc">>, #{}, 1.0, 20)),
     ?_assertEqual({error, {invalid_service_id, 1}}, ?M:query_dht_for_service(Dht, 1, 20)),
     ?_assertEqual({error, {invalid_k, 0}}, ?M:query_dht_for_service(Dht, <<"svc">>, 0)),
     ?_assertEqual({error, {invalid_k, all}}, ?M:query_dht_for_service(Dht, <<"svc">>, all)),
     ?_assertEqual({error, {invalid_service_id, ["svc"]}},
                   ?M:remove_from_dht(Dht, ["svc"], <<1:256>>)),
     ?_assertEqual({error, {invalid_node_id, node1}},
                   ?M:remove_from_dht(Dht, <<"svc">>, node1))].
