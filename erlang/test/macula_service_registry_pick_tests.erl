%% Tests of provider selection and failover in macula_service_registry: pick/3,
%% report_failure/3 and call_with_failover/4.
-module(macula_service_registry_pick_tests).

-include_lib("eunit/include/eunit.hrl").

-define(M, macula_service_registry).
-define(SVC, <<"svc.pick">>).
%% A DHT that is not running: unless a test says otherwise, the cache is all there is.
-define(NO_DHT, macula_service_registry_pick_tests_no_dht).

%%--------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------

new() -> new(#{}).
new(Opts) -> ?M:new(maps:merge(#{dht => ?NO_DHT}, Opts)).

provider(N) -> provider(N, #{}).
provider(N, Fields) ->
    maps:merge(#{node_id => <<N:256>>, endpoint => endpoint(9000 + N), metadata => #{},
                 ttl => 300, advertised_at => 1000},
               Fields).

endpoint(Port) -> <<"127.0.0.1:", (integer_to_binary(Port))/binary>>.

cached(Providers) -> cached(new(), Providers).
cached(R, Providers) -> ?M:cache_service(R, ?SVC, Providers, 300).

%% The N of a provider whose node_id is <<N:256>> (under an atom or a binary key).
id(#{node_id := <<N:256>>}) -> N;
id(#{<<"node_id">> := <<N:256>>}) -> N.

pick_id(R, Strategy) ->
    {ok, P, R1} = ?M:pick(R, ?SVC, Strategy),
    {id(P), R1}.

%% The ids of `Count' picks in a row, and the registry after them.
picks(R, Strategy, Count) ->
    lists:foldl(fun(_, {Ids, Acc}) ->
                        {Id, Acc1} = pick_id(Acc, Strategy),
                        {Ids ++ [Id], Acc1}
                end, {[], R}, lists:seq(1, Count)).

counts(Ids) ->
    lists:foldl(fun(Id, Acc) -> maps:update_with(Id, fun(C) -> C + 1 end, 1, Acc) end, #{}, Ids).

report(R, Ns) ->
    lists:foldl(fun(N, Acc) -> ?M:report_failure(Acc, ?SVC, <<N:256>>) end, R, Ns).

%% The order a strategy gives: pick, report the winner, pick again, until none is left.
order(R, Strategy) ->
    case ?M:pick(R, ?SVC, Strategy) of
        {ok, P, R1} -> [id(P) | order(?M:report_failure(R1, ?SVC, node_id(P)), Strategy)];
        {error, no_providers} -> []
    end.

node_id(#{node_id := Id}) -> Id;
node_id(#{<<"node_id">> := Id}) -> Id.

%%--------------------------------------------------------------------
%% Options
%%--------------------------------------------------------------------

new_options_test_() ->
    [?_assertEqual(?M:new(), ?M:new(#{dht => macula_routing_server, failure_backoff_ms => 5000})),
     ?_assertEqual(?M:new(#{dht => self()}), ?M:new(#{dht => self()})),
     ?_assertNotEqual(?M:new(), ?M:new(#{dht => self()})),
     ?_assertNotEqual(?M:new(), ?M:new(#{failure_backoff_ms => 1})),
     ?_assertNotEqual(?M:new(), ?M:new(#{rtt => fun(_) -> unknown end})),
     ?_assertError(badarg, ?M:new(#{dht => 42})),
     ?_assertError(badarg, ?M:new(#{dht => "macula_routing_server"})),
     ?_assertError(badarg, ?M:new(#{dht => {global, dht}})),
     ?_assertError(badarg, ?M:new(#{rtt => not_a_fun})),
     ?_assertError(badarg, ?M:new(#{rtt => fun() -> unknown end})),
     ?_assertError(badarg, ?M:new(#{rtt => fun(_, _) -> unknown end})),
     ?_assertError(badarg, ?M:new(#{failure_backoff_ms => 0})),
     ?_assertError(badarg, ?M:new(#{failure_backoff_ms => -1})),
     ?_assertError(badarg, ?M:new(#{failure_backoff_ms => 1.5})),
     ?_assertError(badarg, ?M:new(#{failure_backoff_ms => infinity}))].

%%--------------------------------------------------------------------
%% Strategies
%%--------------------------------------------------------------------

round_robin_visits_each_in_turn_test() ->
    R = cached([provider(3), provider(1), provider(2)]),
    {Ids, _} = picks(R, round_robin, 6),
    ?assertEqual(#{1 => 2, 2 => 2, 3 => 2}, counts(Ids)),
    ?assertEqual([1, 2, 3, 1, 2, 3], Ids),
    %% The order is by node_id, whatever order the providers came in.
    ?assertEqual(Ids, element(1, picks(cached([provider(2), provider(3), provider(1)]),
                                       round_robin, 6))).

round_robin_follows_the_current_providers_test() ->
    {[1, 2], R1} = picks(cached([provider(1), provider(2), provider(3)]), round_robin, 2),
    R2 = cached(R1, [provider(4), provider(2)]),
    {Ids, _} = picks(R2, round_robin, 4),
    ?assertEqual(#{2 => 2, 4 => 2}, counts(Ids)),
    [A, B, C, D] = Ids,
    ?assertEqual({A, B}, {C, D}),
    ?assertNotEqual(A, B).

round_robin_counts_per_service_test() ->
    Both = ?M:cache_service(cached([provider(1), provider(2)]), <<"other">>,
                            [provider(1), provider(2)], 300),
    {[1, 2, 1], R1} = picks(Both, round_robin, 3),
    {ok, Other, _} = ?M:pick(R1, <<"other">>, round_robin),
    ?assertEqual(1, id(Other)).

%% Chi-square goodness of fit against uniform, 2 degrees of freedom, p = 0.001. The seed
%% makes the run repeatable.
random_is_uniform_test() ->
    R = cached([provider(1), provider(2), provider(3)]),
    _ = rand:seed(exsss, {20, 11, 29}),
    %% `R' is bound: a random pick leaves the registry as it was.
    Ids = [begin {ok, P, R} = ?M:pick(R, ?SVC, random), id(P) end || _ <- lists:seq(1, 3000)],
    Counts = counts(Ids),
    ?assertEqual([1, 2, 3], lists:sort(maps:keys(Counts))),
    ChiSquare = lists:sum([(O - 1000) * (O - 1000) / 1000 || O <- maps:values(Counts)]),
    ?assert(ChiSquare < 13.82).

random_skips_reported_providers_test() ->
    R = report(cached([provider(1), provider(2), provider(3)]), [2]),
    Ids = [element(1, pick_id(R, random)) || _ <- lists:seq(1, 300)],
    ?assertEqual([1, 3], lists:usort(Ids)).

least_loaded_test() ->
    Providers = [provider(1, #{metadata => #{load => 7}}),
                 provider(2, #{metadata => #{<<"load">> => 3}}),
                 maps:remove(metadata, provider(3)),
                 provider(4, #{metadata => #{load => <<"high">>}}),
                 provider(5, #{metadata => #{load => 0.5}}),
                 #{<<"node_id">> => <<6:256>>, <<"metadata">> => #{<<"load">> => 1}},
                 provider(7, #{metadata => #{load => 3.0}})],
    R = cached(Providers),
    ?assertMatch({5, _}, pick_id(R, least_loaded)),
    %% 3 and 3.0 tie: node_id order; no load (3, 4) last, in node_id order.
    ?assertEqual([5, 6, 2, 7, 1, 3, 4], order(R, least_loaded)),
    ?assertEqual([3, 4], order(cached([provider(4), maps:remove(metadata, provider(3))]),
                               least_loaded)),
    %% A number written as text, as a rust-node's `--meta load=N' arrives.
    Text = [provider(1, #{metadata => #{<<"load">> => <<"12">>}}),
            provider(2, #{metadata => #{<<"load">> => <<"2.5">>}}),
            provider(3, #{metadata => #{<<"load">> => <<"2.5x">>}})],
    ?assertEqual([2, 1, 3], order(cached(Text), least_loaded)).

nearest_test() ->
    Rtts = #{<<1:256>> => {ok, 900}, <<2:256>> => {ok, 100}},
    %% Only 32-byte ids are asked: a shorter one would not match here.
    Rtt = fun(<<_:256>> = Id) -> maps:get(Id, Rtts, unknown) end,
    Short = provider(0, #{node_id => <<"short">>}),
    R = cached(new(#{rtt => Rtt}), [provider(3), Short, provider(1), provider(2)]),
    ?assertMatch({2, _}, pick_id(R, nearest)),
    {ok, P1, R1} = ?M:pick(?M:report_failure(R, ?SVC, <<2:256>>), ?SVC, nearest),
    ?assertEqual(1, id(P1)),
    {ok, P3, R2} = ?M:pick(?M:report_failure(R1, ?SVC, <<1:256>>), ?SVC, nearest),
    ?assertEqual(3, id(P3)),
    {ok, Last, _} = ?M:pick(?M:report_failure(R2, ?SVC, <<3:256>>), ?SVC, nearest),
    ?assertEqual(<<"short">>, maps:get(node_id, Last)).

nearest_follows_the_rtt_test() ->
    Providers = [provider(1), provider(2)],
    Slow = fun(Slower) -> fun(Id) when Id =:= Slower -> {ok, 5000}; (_) -> {ok, 200} end end,
    ?assertMatch({2, _}, pick_id(cached(new(#{rtt => Slow(<<1:256>>)}), Providers), nearest)),
    ?assertMatch({1, _}, pick_id(cached(new(#{rtt => Slow(<<2:256>>)}), Providers), nearest)).

%% The default rtt asks the `dht' process; none runs here, so every time is unknown.
nearest_without_a_dht_test() ->
    ?assertMatch({1, _}, pick_id(cached([provider(2), provider(1)]), nearest)).

%%--------------------------------------------------------------------
%% Failover
%%--------------------------------------------------------------------

reported_provider_is_skipped_test() ->
    R = report(cached([provider(1), provider(2), provider(3)]), [2]),
    {Ids, _} = picks(R, round_robin, 6),
    ?assertEqual(#{1 => 3, 3 => 3}, counts(Ids)),
    %% Its turn goes to the next one in the rotation.
    ?assertEqual([1, 3, 1, 3, 1, 3], Ids),
    ?assertEqual([1, 3], order(R, least_loaded)),
    %% Another service's provider of the same node is not affected.
    R1 = ?M:cache_service(R, <<"other">>, [provider(2)], 300),
    ?assertMatch({ok, #{node_id := <<2:256>>}, _}, ?M:pick(R1, <<"other">>, round_robin)).

skipped_until_the_backoff_is_over_test() ->
    R = report(cached(new(#{failure_backoff_ms => 50}), [provider(1), provider(2)]), [1]),
    ?assertMatch({2, _}, pick_id(R, least_loaded)),
    timer:sleep(60),
    ?assertMatch({1, _}, pick_id(R, least_loaded)).

readvertised_provider_is_used_at_once_test() ->
    R = report(cached([provider(1), provider(2)]), [1]),
    ?assertMatch({2, _}, pick_id(R, least_loaded)),
    Same = cached(R, [provider(1), provider(2)]),
    ?assertMatch({2, _}, pick_id(Same, least_loaded)),
    Older = cached(R, [provider(1, #{advertised_at => 999}), provider(2)]),
    ?assertMatch({2, _}, pick_id(Older, least_loaded)),
    Later = cached(R, [provider(1, #{advertised_at => 1001}), provider(2)]),
    ?assertMatch({1, _}, pick_id(Later, least_loaded)),
    BinaryKey = cached(R, [#{<<"node_id">> => <<1:256>>, <<"advertised_at">> => 1001},
                           provider(2)]),
    ?assertMatch({1, _}, pick_id(BinaryKey, least_loaded)).

repeated_reports_double_the_backoff_test() ->
    R = report(cached(new(#{failure_backoff_ms => 100}), [provider(1), provider(2)]), [1, 1]),
    timer:sleep(150),
    ?assertMatch({2, _}, pick_id(R, least_loaded)),
    timer:sleep(60),
    ?assertMatch({1, _}, pick_id(R, least_loaded)).

%% With a 1 ms first back-off, twenty reports would skip it for minutes but for the cap
%% (60 ms); more than 30 ms shows the doubling.
backoff_is_capped_test() ->
    R = report(cached(new(#{failure_backoff_ms => 1}), [provider(1), provider(2)]),
               lists:duplicate(20, 1)),
    timer:sleep(30),
    ?assertMatch({2, _}, pick_id(R, least_loaded)),
    timer:sleep(40),
    ?assertMatch({1, _}, pick_id(R, least_loaded)).

failure_table_is_bounded_test() ->
    R = cached([provider(1), provider(2), provider(5000)]),
    ?assertMatch({5000, _}, pick_id(report(R, lists:seq(1, 1024)), least_loaded)),
    %% The 1025th report makes room by forgetting the earliest, that of 1.
    ?assertMatch({1, _}, pick_id(report(R, lists:seq(1, 1025)), least_loaded)).

%% A stand-in for the DHT process: answers `find_value' calls (the gen_server call
%% macula_routing_server:find_value/3 makes to a server that is not the local one) with the
%% providers it was given, and counts them.
fake_dht(Providers) ->
    spawn_link(fun() -> fake_dht(Providers, []) end).

fake_dht(Providers, Queries) ->
    receive
        {'$gen_call', From, {find_value, _Key, _K} = Query} ->
            gen_server:reply(From, {ok, Providers}),
            fake_dht(Providers, [Query | Queries]);
        {'$gen_call', From, queries} ->
            gen_server:reply(From, lists:reverse(Queries)),
            fake_dht(Providers, Queries);
        {'$gen_call', From, {set, New}} ->
            gen_server:reply(From, ok),
            fake_dht(New, Queries)
    end.

queries(Dht) -> length(gen_server:call(Dht, queries)).

stop(Pid) ->
    unlink(Pid),
    exit(Pid, kill).

dht_is_asked_on_a_miss_and_when_all_are_skipped_test() ->
    Dht = fake_dht([provider(2), provider(1)]),
    R0 = ?M:new(#{dht => Dht}),
    %% A miss asks the DHT, for 20 providers under the service key, and caches the answer.
    {1, R1} = pick_id(R0, round_robin),
    ?assertEqual([{find_value, ?M:service_key(?SVC), 20}], gen_server:call(Dht, queries)),
    ?assertMatch({ok, [_, _], _}, ?M:discover_service(R1, ?SVC)),
    {2, R2} = pick_id(R1, round_robin),
    ?assertEqual(1, queries(Dht)),
    %% Every cached provider skipped: exactly one fresh query, which brings nothing new.
    Skipped = report(R2, [1, 2]),
    ?assertEqual({error, no_providers}, ?M:pick(Skipped, ?SVC, round_robin)),
    ?assertEqual(2, queries(Dht)),
    %% A fresh query that brings a new provider, which is then cached.
    ok = gen_server:call(Dht, {set, [provider(1), provider(2), provider(3)]}),
    {3, R3} = pick_id(Skipped, round_robin),
    ?assertEqual(3, queries(Dht)),
    ?assertMatch({3, _}, pick_id(R3, least_loaded)),
    ?assertEqual(3, queries(Dht)),
    %% Or a re-advertisement of a skipped one.
    ok = gen_server:call(Dht, {set, [provider(1, #{advertised_at => 1001}), provider(2)]}),
    ?assertMatch({1, _}, pick_id(Skipped, least_loaded)),
    ?assertEqual(4, queries(Dht)),
    %% A cached empty answer means no providers, without a query.
    ?assertEqual({error, no_providers}, ?M:pick(cached(R0, []), ?SVC, round_robin)),
    ?assertEqual(4, queries(Dht)),
    stop(Dht).

%% The real DHT process, in-process without a network: its answer fills the cache, and
%% without a network it knows no round-trip times.
real_dht_test() ->
    {ok, Dht} = macula_routing_server:start_link(auto, #{}),
    try
        [ok = ?M:publish_to_dht(macula_routing_server, ?SVC, provider(N), 300, 20)
         || N <- [2, 1]],
        R = ?M:new(),
        {Ids, R1} = picks(R, round_robin, 4),
        ?assertEqual([1, 2, 1, 2], Ids),
        ?assertMatch({ok, [_, _], _}, ?M:discover_service(R1, ?SVC)),
        ?assertMatch({1, _}, pick_id(R, nearest)),
        ?assertMatch({2, _}, pick_id(report(R1, [1]), nearest))
    after
        gen_server:stop(Dht)
    end.

no_dht_means_no_providers_test_() ->
    {Dead, Ref} = spawn_monitor(fun() -> ok end),
    receive {'DOWN', Ref, process, Dead, _} -> ok end,
    [?_assertEqual({error, no_providers}, ?M:pick(new(), ?SVC, Strategy))
     || Strategy <- [round_robin, random, least_loaded, nearest]] ++
    [?_assertEqual({error, no_providers}, ?M:pick(new(#{dht => Dead}), ?SVC, random)),
     ?_assertEqual({error, no_providers}, ?M:pick(report(cached([provider(1)]), [1]), ?SVC,
                                                  random))].

%%--------------------------------------------------------------------
%% call_with_failover/4
%%--------------------------------------------------------------------

%% Connects to a provider's `127.0.0.1:Port' endpoint, telling the test process which.
connect(#{endpoint := Endpoint} = Provider) ->
    self() ! {called, id(Provider)},
    [Host, Port] = binary:split(Endpoint, <<":">>),
    case gen_tcp:connect(binary_to_list(Host), binary_to_integer(Port), [binary], 1000) of
        {ok, Socket} -> ok = gen_tcp:close(Socket), {ok, binary_to_integer(Port)};
        {error, _} = Error -> Error
    end.

called() ->
    receive {called, Id} -> [Id | called()] after 0 -> [] end.

call_with_failover_reaches_the_live_provider_test() ->
    {ok, Closed} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, DeadPort} = inet:port(Closed),
    ok = gen_tcp:close(Closed),
    {ok, Live} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, LivePort} = inet:port(Live),
    try
        Dead = provider(1, #{endpoint => endpoint(DeadPort)}),
        Alive = provider(2, #{endpoint => endpoint(LivePort)}),
        R = cached([Alive, Dead]),
        ?assertMatch({ok, Dead, _}, ?M:pick(R, ?SVC, round_robin)),
        {ok, Port, R1} = ?M:call_with_failover(R, ?SVC, fun connect/1, #{}),
        ?assertEqual(LivePort, Port),
        ?assertEqual([1, 2], called()),
        %% The refusing provider was reported: the next picks skip it.
        ?assertEqual([2, 2], element(1, picks(R1, round_robin, 2))),
        {error, {all_failed, econnrefused}, R2} =
            ?M:call_with_failover(R, ?SVC, fun connect/1, #{tries => 1}),
        ?assertEqual([1], called()),
        ?assertMatch({2, _}, pick_id(R2, least_loaded))
    after
        gen_tcp:close(Live)
    end.

call_with_failover_spends_its_tries_test() ->
    R = cached([provider(N) || N <- lists:seq(1, 20)]),
    Fail = fun(P) -> self() ! {called, id(P)}, {error, nope} end,
    {error, {all_failed, nope}, R1} = ?M:call_with_failover(R, ?SVC, Fail, #{}),
    ?assertEqual([1, 2, 3], called()),
    ?assertMatch({4, _}, pick_id(R1, least_loaded)),
    ?assertMatch({error, {all_failed, nope}, _},
                 ?M:call_with_failover(R, ?SVC, Fail, #{tries => 16, strategy => random})),
    Called = called(),
    ?assertEqual(16, length(Called)),
    ?assertEqual(16, length(lists:usort(Called))),
    ?assertMatch({ok, done, _},
                 ?M:call_with_failover(R, ?SVC, fun(_) -> {ok, done} end,
                                       #{tries => 1, strategy => least_loaded})),
    ?assertEqual([], called()).

call_with_failover_until_none_is_left_test_() ->
    R = cached([provider(1), provider(2)]),
    Failures = [{fun(_) -> error(boom) end, {error, boom}},
                {fun(_) -> throw(oops) end, {throw, oops}},
                {fun(_) -> exit(gone) end, {exit, gone}},
                {fun(_) -> weird end, {bad_return, weird}},
                {fun(_) -> {error, refused} end, refused}],
    [?_test(begin
                {error, {all_failed, Failed}, R1} = ?M:call_with_failover(R, ?SVC, Fun,
                                                                         #{tries => 5}),
                ?assertEqual(Why, Failed),
                %% Both were reported.
                ?assertEqual({error, no_providers}, ?M:pick(R1, ?SVC, random))
            end)
     || {Fun, Why} <- Failures] ++
    [?_assertEqual({error, no_providers, new()},
                   ?M:call_with_failover(new(), ?SVC, fun(_) -> {ok, x} end, #{}))].

%%--------------------------------------------------------------------
%% Bad arguments
%%--------------------------------------------------------------------

bad_arguments_test_() ->
    R = cached([provider(1)]),
    Ok = fun(_) -> {ok, x} end,
    Call = fun(Id, Fun, Opts) -> ?M:call_with_failover(R, Id, Fun, Opts) end,
    [?_assertEqual({error, {invalid_strategy, fastest}}, ?M:pick(R, ?SVC, fastest)),
     ?_assertEqual({error, {invalid_strategy, "random"}}, ?M:pick(R, ?SVC, "random")),
     ?_assertEqual({error, {invalid_service_id, "svc"}}, ?M:pick(R, "svc", round_robin)),
     ?_assertEqual({error, {invalid_service_id, svc}}, ?M:pick(R, svc, fastest)),
     ?_assertEqual({error, no_providers}, ?M:pick(R, <<"unknown">>, round_robin)),
     ?_assertEqual({error, no_providers},
                   ?M:pick(?M:cache_service(new(), ?SVC, [p, 42], 300), ?SVC, round_robin)),
     ?_assertEqual({error, {invalid_option, {tries, 0}}, R}, Call(?SVC, Ok, #{tries => 0})),
     ?_assertEqual({error, {invalid_option, {tries, 17}}, R}, Call(?SVC, Ok, #{tries => 17})),
     ?_assertEqual({error, {invalid_option, {tries, three}}, R},
                   Call(?SVC, Ok, #{tries => three})),
     ?_assertEqual({error, {invalid_option, {strategy, fastest}}, R},
                   Call(?SVC, Ok, #{strategy => fastest})),
     ?_assertEqual({error, {invalid_service_id, "svc"}, R}, Call("svc", Ok, #{})),
     ?_assertEqual({error, {invalid_fun, not_a_fun}, R}, Call(?SVC, not_a_fun, #{})),
     ?_assertMatch({error, {invalid_fun, _}, R}, Call(?SVC, fun() -> {ok, x} end, #{})),
     ?_assertError(function_clause, Call(?SVC, Ok, [{tries, 1}])),
     ?_assertError(function_clause, ?M:report_failure(R, "svc", <<1:256>>)),
     ?_assertError(function_clause, ?M:report_failure(R, ?SVC, 1)),
     %% The registry is still usable.
     ?_assertMatch({ok, #{node_id := <<1:256>>}, _}, ?M:pick(R, ?SVC, round_robin)),
     ?_assertEqual({ok, x, R}, Call(?SVC, Ok, #{strategy => random}))].
