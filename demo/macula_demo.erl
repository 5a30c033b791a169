%% @doc `make demo': one DHT of two BEAM VMs and two Rust nodes on loopback, played as a short
%% report.
%%
%% The nodes join; `test.calculator' is advertised from a BEAM node (with a local handler) and
%% from a Rust node, discovered from every node and called; one provider is removed and a
%% short-lived one expires, each seen gone everywhere; then everything is stopped. One PASS/FAIL
%% line per step and a summary; the exit status is 1 when a step failed.
-module(macula_demo).

-export([main/1]).

-define(SERVICE, <<"test.calculator">>).
%% The first node is the bootstrap node of the others.
-define(NODES, [{beam, "beam-1"}, {rust, "rust-1"}, {beam, "beam-2"}, {rust, "rust-2"}]).
-define(LONG_TTL, 300).
-define(SHORT_TTL, 2).
%% Bounds of the polls that wait for the cluster to converge, in milliseconds.
-define(JOIN_WITHIN, 10000).
-define(CONVERGE_WITHIN, 5000).
-define(POLL_INTERVAL, 100).

%% @doc Plays the demo with the `rust-node' binary at `RustNode' and the fresh directory `Dir'
%% for keys, sockets and logs (removed at the end), then halts.
-spec main([string()]) -> no_return().
main([RustNode, Dir]) ->
    T0 = now_ms(),
    Env = #{dir => Dir, bootstrap => [], rust_node => RustNode},
    {Nodes, Started} = start_nodes(?NODES, Env, []),
    header(Nodes),
    Verdicts = case Started of
                   ok -> [step(Title, Check) || {Title, Check} <- steps(Nodes)];
                   {error, Why} -> [report("start", {fail, Why})]
               end ++ [step("stop", fun() -> stop(Nodes, Dir) end)],
    Failed = length([fail || fail <- Verdicts]),
    Took = seconds(now_ms() - T0),
    case Failed of
        0 -> io:format("~nall ~b steps passed in ~s~n", [length(Verdicts), Took]);
        _ -> io:format("~n~b of ~b steps FAILED (~s)~n", [Failed, length(Verdicts), Took])
    end,
    halt(min(Failed, 1)).

steps([Beam1, _Rust1, Beam2, Rust2] = Nodes) ->
    [{"join", fun() -> join(Nodes) end},
     {"advertise", fun() -> advertise([Beam1, Rust2]) end}]
    ++ [{"discover from " ++ name(N), fun() -> discover(N, [Beam1, Rust2], Nodes) end}
        || N <- Nodes]
    ++ [{"call", fun() -> call(Beam2, Nodes) end},
        {"remove", fun() -> remove(Rust2, [Beam1], Nodes) end},
        {"expire", fun() -> expire(Beam2, [Beam1], Nodes) end}].

%%====================================================================
%% Steps: each returns {pass | fail, Facts}
%%====================================================================

join(Nodes) ->
    Others = length(Nodes) - 1,
    Check = fun() ->
                    Short = [name(N) || N <- Nodes, macula_demo_node:peer_count(N) < Others],
                    {Short =:= [], Short}
            end,
    case poll(Check, ?JOIN_WITHIN) of
        {true, _, Ms} ->
            {pass, fmt("each node knows the ~b others (~s)", [Others, seconds(Ms)])};
        {false, Short, Ms} ->
            {fail, fmt("after ~s, ~s know fewer than ~b others",
                       [seconds(Ms), list(Short), Others])}
    end.

advertise(Providers) ->
    Results = [{name(N), macula_demo_node:advertise(N, ?SERVICE, ?LONG_TTL)} || N <- Providers],
    case [{Name, R} || {Name, R} <- Results, R =/= ok] of
        [] -> {pass, fmt("~s from ~s, ttl ~b s", [?SERVICE, list(names(Providers)), ?LONG_TTL])};
        Errors -> {fail, fmt("~p", [Errors])}
    end.

discover(Node, Providers, Nodes) ->
    case converge([Node], Providers, Nodes, ?CONVERGE_WITHIN) of
        {true, _, _} ->
            {pass, fmt("~b providers (~s)", [length(Providers), list(names(Providers))])};
        {false, Differ, Ms} ->
            {fail, fmt("after ~s: ~s", [seconds(Ms), Differ])}
    end.

%% A caller discovers the service and runs the handler of a BEAM provider on its VM.
call(Caller, Nodes) ->
    {ok, Ids} = macula_demo_node:discover(Caller, ?SERVICE),
    case [N || #{kind := beam, id := Id} = N <- Nodes, lists:member(Id, Ids)] of
        [Provider | _] ->
            Sum = macula_demo_node:call(Provider, ?SERVICE, #{a => 42, b => 8}),
            {verdict(Sum =:= 50),
             fmt("~s discovers ~s, runs its handler on it: 42 + 8 = ~p",
                 [name(Caller), name(Provider), Sum])};
        [] ->
            {fail, fmt("~s discovers no BEAM provider: ~s",
                       [name(Caller), found(names(Ids, Nodes))])}
    end.

remove(Provider, Stay, Nodes) ->
    ok = macula_demo_node:remove(Provider, ?SERVICE),
    case converge(Nodes, Stay, Nodes, ?CONVERGE_WITHIN) of
        {true, _, Ms} ->
            {pass, fmt("~s withdrew; gone on all ~b nodes after ~s (~s stays)",
                       [name(Provider), length(Nodes), seconds(Ms), list(names(Stay))])};
        {false, Differ, Ms} ->
            {fail, fmt("~s withdrew; after ~s: ~s", [name(Provider), seconds(Ms), Differ])}
    end.

expire(Provider, Stay, Nodes) ->
    Published = now_ms(),
    ok = macula_demo_node:advertise(Provider, ?SERVICE, ?SHORT_TTL),
    What = fmt("~s published with ttl ~b s", [name(Provider), ?SHORT_TTL]),
    case converge(Nodes, [Provider | Stay], Nodes, ?CONVERGE_WITHIN) of
        {true, _, _} ->
            case converge(Nodes, Stay, Nodes, ?SHORT_TTL * 1000 + ?CONVERGE_WITHIN) of
                {true, _, _} ->
                    {pass, fmt("~s: seen on all ~b nodes, gone on all ~s after publishing "
                               "(~s stays)", [What, length(Nodes), seconds(now_ms() - Published),
                                              list(names(Stay))])};
                {false, Differ, _} ->
                    {fail, fmt("~s: not gone ~s after publishing: ~s",
                               [What, seconds(now_ms() - Published), Differ])}
            end;
        {false, Differ, Ms} ->
            {fail, fmt("~s: not seen everywhere after ~s: ~s", [What, seconds(Ms), Differ])}
    end.

%%====================================================================
%% Cluster
%%====================================================================

%% Starts the nodes in order, each joining through the first; stops at the first that fails.
start_nodes([], _Env, Started) ->
    {lists:reverse(Started), ok};
start_nodes([{Kind, Name} | Rest], Env, Started) ->
    try macula_demo_node:start(Kind, Name, Env) of
        Node ->
            #{addr := SeedAddr} = lists:last([Node | Started]),
            start_nodes(Rest, Env#{bootstrap := [SeedAddr]}, [Node | Started])
    catch
        Class:Reason ->
            {lists:reverse(Started), {error, fmt("~s: ~p:~p", [Name, Class, Reason])}}
    end.

stop(Nodes, Dir) ->
    Errors = [{name(N), E} || N <- lists:reverse(Nodes),
                              {error, _} = E <- [macula_demo_node:stop(N)]],
    Removed = file:del_dir_r(Dir),
    case {Errors, Removed} of
        {[], ok} ->
            {pass, fmt("~s stopped (BEAM VMs by peer:stop, Rust nodes by SIGTERM: exit 0), "
                       "temp dir removed", [list(names(Nodes))])};
        _ ->
            {fail, fmt("~p, temp dir: ~p", [Errors, Removed])}
    end.

%% Polls until each of `Observers' finds exactly `Providers'; the detail lists those that do not.
converge(Observers, Providers, Nodes, Within) ->
    Expected = names(Providers),
    Check = fun() ->
                    Differ = [fmt("~s finds ~s", [name(O), found(Found)])
                              || O <- Observers, Found <- [finds(O, Nodes)], Found =/= Expected],
                    {Differ =:= [], lists:join("; ", Differ)}
            end,
    poll(Check, Within).

%% Names of the providers `Observer' finds, or the error.
finds(Observer, Nodes) ->
    case macula_demo_node:discover(Observer, ?SERVICE) of
        {ok, Ids} -> names(Ids, Nodes);
        {error, _} = Error -> Error
    end.

found([]) -> "none";
found(Names) when is_list(Names) -> list(Names);
found(Error) -> fmt("~p", [Error]).

%% Calls `Check' until it returns `{true, Detail}' or `Within' ms have passed:
%% `{Done, LastDetail, ElapsedMs}'.
poll(Check, Within) ->
    T0 = now_ms(),
    poll(Check, T0, T0 + Within).

poll(Check, T0, Deadline) ->
    {Done, Detail} = Check(),
    Now = now_ms(),
    case Done orelse Now >= Deadline of
        true -> {Done, Detail, Now - T0};
        false -> timer:sleep(?POLL_INTERVAL), poll(Check, T0, Deadline)
    end.

%%====================================================================
%% Report
%%====================================================================

header(Nodes) ->
    io:format("macula_dht demo: ~s on one DHT of 2 BEAM VMs and 2 Rust nodes~n~n", [?SERVICE]),
    Seed = hd(Nodes),
    [io:format("  ~-7s ~-5s id ~s  ~-16s ~s~n",
               [name(N), Kind, short_id(Id), Addr, role(N, Seed)])
     || #{kind := Kind, id := Id, addr := Addr} = N <- Nodes],
    io:format("~n").

role(Seed, Seed) -> "bootstrap node";
role(_Node, Seed) -> "joined via " ++ name(Seed).

step(Title, Check) ->
    Result = try Check()
             catch Class:Reason -> {fail, fmt("crashed: ~p:~p", [Class, Reason])}
             end,
    report(Title, Result).

report(Title, {Verdict, Facts}) ->
    io:format("  ~s  ~s: ~ts~n", [string:uppercase(atom_to_list(Verdict)), Title, Facts]),
    Verdict.

verdict(true) -> pass;
verdict(false) -> fail.

name(#{name := Name}) -> Name.

names(Nodes) -> lists:sort([name(N) || N <- Nodes]).

%% Node names of provider ids (an id of no demo node shows as its hex prefix).
names(Ids, Nodes) ->
    lists:sort([case [name(N) || #{id := NodeId} = N <- Nodes, NodeId =:= Id] of
                    [Name] -> Name;
                    [] -> short_id(Id)
                end || Id <- Ids]).

short_id(<<Prefix:4/binary, _/binary>>) ->
    string:lowercase(binary_to_list(binary:encode_hex(Prefix))).

list(Names) -> lists:join(", ", Names).

seconds(Ms) -> fmt("~.1f s", [Ms / 1000]).

fmt(Format, Args) -> lists:flatten(io_lib:format(Format, Args)).

now_ms() -> erlang:monotonic_time(millisecond).
