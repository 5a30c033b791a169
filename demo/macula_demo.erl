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
-define(LONG_TTL, 300).
-define(SHORT_TTL, 2).
%% Bounds of the polls that wait for the cluster to converge, in milliseconds.
-define(JOIN_WITHIN, 10000).
-define(CONVERGE_WITHIN, 5000).
-define(POLL_INTERVAL, 100).

-type node_() :: macula_demo_node:node_().
-type verdict() :: pass | fail.
%% What a step found, for its report line.
-type facts() :: unicode:chardata().
-type check() :: fun(() -> {verdict(), facts()}).

%% @doc Plays the demo with the `rust-node' binary at `RustNode' and the fresh directory `Dir'
%% for keys, sockets and logs (removed at the end), then halts.
-spec main([string()]) -> no_return().
main([RustNode, Dir]) ->
    T0 = now_ms(),
    Verdicts = case macula_demo_node:start_cluster(RustNode, Dir) of
                   {ok, Cluster, Nodes} ->
                       header(Nodes),
                       Played = [step(Title, Check) || {Title, Check} <- steps(Nodes)],
                       Played ++ [step("stop", fun() -> stop(Cluster, Nodes, Dir) end)];
                   {error, Why} ->
                       %% Whatever had started is stopped already.
                       header([]),
                       [report("start", {fail, fmt("~p", [Why])}),
                        step("stop", fun() -> stop(none, [], Dir) end)]
               end,
    Failed = length([fail || fail <- Verdicts]),
    Took = seconds(now_ms() - T0),
    case Failed of
        0 -> io:format("~nall ~b steps passed in ~s~n", [length(Verdicts), Took]);
        _ -> io:format("~n~b of ~b steps FAILED (~s)~n", [Failed, length(Verdicts), Took])
    end,
    halt(min(Failed, 1)).

-spec steps([node_()]) -> [{string(), check()}].
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

-spec join([node_()]) -> {verdict(), facts()}.
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

-spec advertise([node_()]) -> {verdict(), facts()}.
advertise(Providers) ->
    Results = [{name(N), macula_demo_node:advertise(N, ?SERVICE, ?LONG_TTL)} || N <- Providers],
    case [{Name, R} || {Name, R} <- Results, R =/= ok] of
        [] -> {pass, fmt("~s from ~s, ttl ~b s", [?SERVICE, list(names(Providers)), ?LONG_TTL])};
        Errors -> {fail, fmt("~p", [Errors])}
    end.

-spec discover(node_(), [node_()], [node_()]) -> {verdict(), facts()}.
discover(Node, Providers, Nodes) ->
    case converge([Node], Providers, Nodes, ?CONVERGE_WITHIN) of
        {true, _, _} ->
            {pass, fmt("~b providers (~s)", [length(Providers), list(names(Providers))])};
        {false, Differ, Ms} ->
            {fail, fmt("after ~s: ~s", [seconds(Ms), Differ])}
    end.

%% A caller discovers the service and runs the handler of a BEAM provider on its VM.
-spec call(node_(), [node_()]) -> {verdict(), facts()}.
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

-spec remove(node_(), [node_()], [node_()]) -> {verdict(), facts()}.
remove(Provider, Stay, Nodes) ->
    ok = macula_demo_node:remove(Provider, ?SERVICE),
    case converge(Nodes, Stay, Nodes, ?CONVERGE_WITHIN) of
        {true, _, Ms} ->
            {pass, fmt("~s withdrew; gone on all ~b nodes after ~s (~s stays)",
                       [name(Provider), length(Nodes), seconds(Ms), list(names(Stay))])};
        {false, Differ, Ms} ->
            {fail, fmt("~s withdrew; after ~s: ~s", [name(Provider), seconds(Ms), Differ])}
    end.

-spec expire(node_(), [node_()], [node_()]) -> {verdict(), facts()}.
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

%% Stops the nodes (the newest first) and removes the directory.
-spec stop(macula_dht_local:cluster() | none, [node_()], file:filename()) ->
          {verdict(), facts()}.
stop(Cluster, Nodes, Dir) ->
    Stopped = case Cluster of
                  none -> ok;
                  _ -> macula_dht_local:stop(Cluster)
              end,
    Removed = file:del_dir_r(Dir),
    case {Stopped, Removed, Nodes} of
        {ok, ok, []} ->
            {pass, "no node left running, temp dir removed"};
        {ok, ok, _} ->
            {pass, fmt("~s stopped (BEAM VMs by peer:stop, Rust nodes by SIGTERM: exit 0), "
                       "temp dir removed", [list(names(Nodes))])};
        _ ->
            {fail, fmt("~p, temp dir: ~p", [Stopped, Removed])}
    end.

%% Polls until each of `Observers' finds exactly `Providers'; the detail lists those that do not.
-spec converge([node_()], [node_()], [node_()], non_neg_integer()) ->
          {Done :: boolean(), Differ :: facts(), ElapsedMs :: non_neg_integer()}.
converge(Observers, Providers, Nodes, Within) ->
    Expected = names(Providers),
    Check = fun() ->
                    Differ = [fmt("~s finds ~s", [name(O), found(Found)])
                              || O <- Observers, Found <- [finds(O, Nodes)], Found =/= Expected],
                    {Differ =:= [], lists:join("; ", Differ)}
            end,
    poll(Check, Within).

%% Names of the providers `Observer' finds, or the error.
-spec finds(node_(), [node_()]) -> [string()] | {error, term()}.
finds(Observer, Nodes) ->
    case macula_demo_node:discover(Observer, ?SERVICE) of
        {ok, Ids} -> names(Ids, Nodes);
        {error, _} = Error -> Error
    end.

-spec found([string()] | {error, term()}) -> facts().
found([]) -> "none";
found(Names) when is_list(Names) -> list(Names);
found(Error) -> fmt("~p", [Error]).

%% Calls `Check' until it returns `{true, Detail}' or `Within' ms have passed:
%% `{Done, LastDetail, ElapsedMs}'.
-spec poll(fun(() -> {boolean(), Detail}), non_neg_integer()) ->
          {boolean(), Detail, non_neg_integer()}.
poll(Check, Within) ->
    T0 = now_ms(),
    poll(Check, T0, T0 + Within).

-spec poll(fun(() -> {boolean(), Detail}), integer(), integer()) ->
          {boolean(), Detail, non_neg_integer()}.
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

%% The title, and a line per node started (the first is the others' bootstrap node).
-spec header([node_()]) -> ok.
header(Nodes) ->
    io:format("macula_dht demo: ~s on one DHT of 2 BEAM VMs and 2 Rust nodes~n~n", [?SERVICE]),
    [io:format("  ~-7s ~-5s id ~s  ~-16s ~s~n",
               [name(N), Kind, short_id(Id), Addr, role(N, hd(Nodes))])
     || #{kind := Kind, id := Id, addr := Addr} = N <- Nodes],
    io:format("~n").

-spec role(node_(), Seed :: node_()) -> string().
role(Seed, Seed) -> "bootstrap node";
role(_Node, Seed) -> "joined via " ++ name(Seed).

-spec step(string(), check()) -> verdict().
step(Title, Check) ->
    Result = try Check()
             catch Class:Reason -> {fail, fmt("crashed: ~p:~p", [Class, Reason])}
             end,
    report(Title, Result).

-spec report(string(), {verdict(), facts()}) -> verdict().
report(Title, {Verdict, Facts}) ->
    io:format("  ~s  ~s: ~ts~n", [string:uppercase(atom_to_list(Verdict)), Title, Facts]),
    Verdict.

-spec verdict(boolean()) -> verdict().
verdict(true) -> pass;
verdict(false) -> fail.

-spec name(node_()) -> string().
name(#{name := Name}) -> Name.

-spec names([node_()]) -> [string()].
names(Nodes) -> lists:sort([name(N) || N <- Nodes]).

%% Node names of provider ids (an id of no demo node shows as its hex prefix).
-spec names([binary()], [node_()]) -> [string()].
names(Ids, Nodes) ->
    lists:sort([case [name(N) || #{id := NodeId} = N <- Nodes, NodeId =:= Id] of
                    [Name] -> Name;
                    [] -> short_id(Id)
                end || Id <- Ids]).

-spec short_id(binary()) -> string().
short_id(<<Prefix:4/binary, _/binary>>) ->
    string:lowercase(binary_to_list(binary:encode_hex(Prefix))).

-spec list([string()]) -> facts().
list(Names) -> lists:join(", ", Names).

-spec seconds(number()) -> string().
seconds(Ms) -> fmt("~.1f s", [Ms / 1000]).

-spec fmt(io:format(), [term()]) -> string().
fmt(Format, Args) -> lists:flatten(io_lib:format(Format, Args)).

-spec now_ms() -> integer().
now_ms() -> erlang:monotonic_time(millisecond).
