%% @doc One node of the demo's cluster, BEAM or Rust, behind one interface: advertise, discover,
%% remove, call, peer count.
%%
%% `macula_dht_local' starts, reaches and stops the nodes (BEAM peer VMs and `rust-node'
%% processes); on each BEAM VM `macula_demo_peer' also serves the handlers of the services that
%% VM advertises. A node is a `macula_dht_local' handle; the demo reads its `name', `kind', `id'
%% (32 bytes) and `addr' (<<"127.0.0.1:PORT">>).
-module(macula_demo_node).

-export([start_cluster/2, advertise/3, discover/2, remove/2, call/3, peer_count/1]).

-export_type([node_/0]).

-type node_() :: macula_dht_local:node_().

%% Providers a discovery asks for: the demo never runs more than two of a service at once.
-define(WANT, 2).
%% Bound of one call into a node (a network lookup answers within 5 s), and of a node's start.
-define(CALL_TIMEOUT, 10000).
-define(START_TIMEOUT, 10000).

%% @doc Starts the demo's cluster with the `rust-node' binary `RustNode', the nodes' keys, logs
%% and sockets in `Dir': beam-1, rust-1, beam-2, rust-2, each joining through beam-1, and
%% `macula_demo_peer' on each BEAM VM. On an error nothing is left running.
-spec start_cluster(file:filename(), file:filename()) ->
          {ok, macula_dht_local:cluster(), [node_()]} | {error, term()}.
start_cluster(RustNode, Dir) ->
    Options = #{beam => 2, rust => 2, rust_node => RustNode, dir => Dir,
                code_path => [filename:dirname(code:which(?MODULE))],
                start_timeout_ms => ?START_TIMEOUT, call_timeout_ms => ?CALL_TIMEOUT},
    case macula_dht_local:start(Options) of
        {ok, Cluster, Nodes} ->
            case [{Name, R} || #{kind := beam, name := Name} = N <- Nodes,
                               R <- [peer_call(N, start, [])], R =/= ok] of
                [] ->
                    {ok, Cluster, Nodes};
                Failed ->
                    _ = macula_dht_local:stop(Cluster),
                    {error, {macula_demo_peer, Failed}}
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc Publishes `Node' as a provider of `Service' for `Ttl' seconds; a BEAM node also serves it
%% with a local handler, a Rust node republishes it until removed.
-spec advertise(node_(), binary(), pos_integer()) -> ok | {error, term()}.
advertise(Node, Service, Ttl) ->
    case macula_dht_local:advertise(Node, Service, endpoint(Node), Ttl) of
        ok -> serve(Node, Service);
        {error, _} = Error -> Error
    end.

%% @doc The sorted `node_id's of the providers of `Service' that `Node' finds.
-spec discover(node_(), binary()) -> {ok, [binary()]} | {error, term()}.
discover(Node, Service) ->
    macula_dht_local:discover(Node, Service, ?WANT).

%% @doc Withdraws `Node''s provider of `Service' from the whole DHT (and a BEAM node stops
%% serving it).
-spec remove(node_(), binary()) -> ok | {error, term()}.
remove(#{kind := beam} = Node, Service) ->
    case macula_dht_local:remove(Node, Service) of
        ok -> peer_call(Node, unserve, [Service]);
        {error, _} = Error -> Error
    end;
remove(#{kind := rust} = Node, Service) ->
    macula_dht_local:remove(Node, Service).

%% @doc Runs the handler a BEAM node serves `Service' with, on that node.
-spec call(node_(), binary(), map()) -> term().
call(#{kind := beam} = Node, Service, Args) ->
    peer_call(Node, call, [Service, Args]).

%% @doc How many nodes `Node' has in its routing table.
-spec peer_count(node_()) -> non_neg_integer().
peer_count(Node) ->
    {ok, #{peers := Peers}} = macula_dht_local:stats(Node),
    Peers.

%%====================================================================
%% Internal
%%====================================================================

-spec serve(node_(), binary()) -> ok.
serve(#{kind := beam} = Node, Service) -> peer_call(Node, serve, [Service]);
serve(#{kind := rust}, _Service) -> ok.

-spec endpoint(node_()) -> binary().
endpoint(#{addr := Addr}) ->
    <<"https://", Addr/binary>>.

-spec peer_call(node_(), atom(), [term()]) -> term().
peer_call(#{peer := Peer}, Function, Args) ->
    peer:call(Peer, macula_demo_peer, Function, Args, ?CALL_TIMEOUT).
