%% @doc `make demo': the service-discovery scenario on one node, as a short report.
%%
%% Advertises `test.calculator', discovers it, hits the discovery cache, adds a second provider
%% (both listed), runs the local handler, removes one provider, lets a short ttl expire and
%% prunes the cache. One PASS/FAIL line per step; the exit code says whether all passed.
-module(macula_demo).

-export([main/0]).

-define(SERVICE, <<"test.calculator">>).
-define(DHT, macula_routing_server).

main() ->
    {ok, Pid} = macula_routing_server:start_link(macula_routing_nodeid:generate(), #{k => 20, alpha => 3}),
    unlink(Pid),
    io:format("macula_dht demo: one node, service ~s~n~n", [?SERVICE]),
    R0 = macula_service_registry:new(#{cache_ttl => 1}),
    Steps = [fun advertise/1, fun discover/1, fun cache_hit/1, fun second_provider/1,
             fun run_handler/1, fun remove_provider/1, fun ttl_expires/1, fun prune_cache/1],
    {Passed, Failed} = run(Steps, R0, 0, 0),
    gen_server:stop(Pid),
    io:format("~n~b passed, ~b failed~n", [Passed, Failed]),
    halt(case Failed of 0 -> 0; _ -> 1 end).

run([], _R, Passed, Failed) ->
    {Passed, Failed};
run([Step | Rest], R, Passed, Failed) ->
    try Step(R) of
        {ok, What, R1} ->
            io:format("  PASS  ~ts~n", [What]),
            run(Rest, R1, Passed + 1, Failed);
        {fail, What, Why} ->
            io:format("  FAIL  ~ts: ~tp~n", [What, Why]),
            run(Rest, R, Passed, Failed + 1)
    catch Class:Reason ->
        io:format("  FAIL  ~p: ~p:~p~n", [erlang:fun_info(Step, name), Class, Reason]),
        run(Rest, R, Passed, Failed + 1)
    end.

provider(Name, Ttl) ->
    {#{node_id => Name, endpoint => <<"https://", Name/binary, ".macula.test:9443">>,
       metadata => #{version => <<"1.0">>}}, Ttl}.

publish({Provider, Ttl}) ->
    ok = macula_service_registry:publish_to_dht(?DHT, ?SERVICE, Provider, Ttl, 20).

names() ->
    {ok, Providers} = macula_service_registry:query_dht_for_service(?DHT, ?SERVICE, 20),
    [maps:get(node_id, P) || P <- Providers].

advertise(R) ->
    Handler = fun(#{a := A, b := B}) -> A + B end,
    R1 = macula_service_registry:advertise_local(R, ?SERVICE, Handler, #{}),
    publish(provider(<<"node-1">>, 300)),
    expect("advertise test.calculator from node-1", [<<"node-1">>], names(), R1).

discover(R) ->
    {cache_miss, R1} = macula_service_registry:discover_service(R, ?SERVICE),
    {ok, Providers} = macula_service_registry:query_dht_for_service(?DHT, ?SERVICE, 20),
    R2 = macula_service_registry:cache_service(R1, ?SERVICE, Providers, 60),
    expect("discover it through the DHT (cache miss, then cached)", 1, length(Providers), R2).

cache_hit(R) ->
    case macula_service_registry:discover_service(R, ?SERVICE) of
        {ok, [_], R1} -> {ok, "discover again: served from the cache", R1};
        Other -> {fail, "discover again from the cache", Other}
    end.

second_provider(R) ->
    publish(provider(<<"node-2">>, 300)),
    expect("a second provider of the same service: both listed",
           [<<"node-2">>, <<"node-1">>], names(), R).

run_handler(R) ->
    {ok, Handler} = macula_service_registry:get_local_handler(R, ?SERVICE),
    expect("run the local handler: 42 + 8 = 50", 50, Handler(#{a => 42, b => 8}), R).

remove_provider(R) ->
    ok = macula_service_registry:remove_from_dht(?DHT, ?SERVICE, <<"node-1">>),
    expect("remove node-1: node-2 stays", [<<"node-2">>], names(), R).

ttl_expires(R) ->
    publish(provider(<<"node-3">>, 1)),
    [<<"node-3">>, <<"node-2">>] = names(),
    timer:sleep(1200),
    expect("node-3 advertised with ttl 1 s is gone after it", [<<"node-2">>], names(), R).

prune_cache(R) ->
    {R1, Removed} = macula_service_registry:prune_expired(R),
    expect("prune the discovery cache (entry older than cache_ttl 1 s)", 1, Removed, R1).

expect(What, Expected, Expected, R) -> {ok, What, R};
expect(What, Expected, Got, _R) -> {fail, What, {expected, Expected, got, Got}}.
