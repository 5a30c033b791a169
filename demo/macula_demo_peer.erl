%% @doc The demo's agent inside a BEAM peer VM: it owns that VM's `macula_routing_server'
%% (network mode) and its service registry, which holds the handlers the VM serves.
%%
%% It exists because every `peer:call/5' runs in a short-lived process: the routing server and
%% the registry need a long-lived owner, this gen_server, registered under its module name.
-module(macula_demo_peer).
-behaviour(gen_server).

-export([start/1, advertise/3, remove/1, call/2, provider_ids/1, peer_count/0]).
-export([init/1, handle_call/3, handle_cast/2]).

-define(DHT, macula_routing_server).
%% Replication width passed to the registry's DHT helpers (the server uses its own k).
-define(K, 20).

-type registry() :: macula_service_registry:registry().

%% @doc Sends this VM's log to `log', starts the routing server (listening on `listen', joining
%% through `bootstrap', with the key in `identity') and returns its id and bound address.
-spec start(#{log := file:filename(), atom() => term()}) ->
          {ok, NodeId :: binary(), Addr :: string()} | {error, term()}.
start(#{log := Log} = Config) ->
    ok = logger:remove_handler(default),
    ok = logger:add_handler(default, logger_std_h, #{config => #{file => Log}}),
    case gen_server:start({local, ?MODULE}, ?MODULE, maps:remove(log, Config), []) of
        {ok, _Pid} ->
            {ok, {Ip, Port}} = macula_routing_server:address(?DHT),
            Addr = inet:ntoa(Ip) ++ ":" ++ integer_to_list(Port),
            {ok, macula_routing_server:node_id(?DHT), Addr};
        {error, _} = Error ->
            Error
    end.

%% @doc Serves `Service' here (its handler in the registry) and publishes this node as a
%% provider reachable at `Endpoint', for `Ttl' seconds.
-spec advertise(binary(), binary(), pos_integer()) -> ok | {error, term()}.
advertise(Service, Endpoint, Ttl) ->
    gen_server:call(?MODULE, {advertise, Service, Endpoint, Ttl}).

%% @doc Stops serving `Service' and removes this node's provider record from the DHT.
-spec remove(binary()) -> ok | {error, term()}.
remove(Service) ->
    gen_server:call(?MODULE, {remove, Service}).

%% @doc Runs the handler this VM serves `Service' with, as an incoming request would.
-spec call(binary(), map()) -> term().
call(Service, Args) ->
    {ok, Handler} = gen_server:call(?MODULE, {handler, Service}),
    Handler(Args).

%% @doc The `node_id's of the providers of `Service' this node finds, sorted.
-spec provider_ids(binary()) -> {ok, [binary()]} | {error, term()}.
provider_ids(Service) ->
    case macula_service_registry:query_dht_for_service(?DHT, Service, ?K) of
        {ok, Providers} -> {ok, lists:sort([maps:get(node_id, P) || P <- Providers])};
        {error, _} = Error -> Error
    end.

-spec peer_count() -> non_neg_integer().
peer_count() ->
    length(macula_routing_server:peers(?DHT)).

%% The handler of each service a demo VM can serve.
-spec handler(binary()) -> fun((#{a := number(), b := number()}) -> number()).
handler(<<"test.calculator">>) -> fun(#{a := A, b := B}) -> A + B end.

-spec init(map()) -> {ok, registry()} | {stop, term()}.
init(Config) ->
    case macula_routing_server:start_link(auto, Config) of
        {ok, _Pid} -> {ok, macula_service_registry:new()};
        {error, Reason} -> {stop, Reason}
    end.

-spec handle_call({advertise, binary(), binary(), pos_integer()} | {remove, binary()}
                  | {handler, binary()}, gen_server:from(), registry()) ->
          {reply, ok | {error, term()} | {ok, function()} | not_found, registry()}.
handle_call({advertise, Service, Endpoint, Ttl}, _From, Registry) ->
    Id = macula_routing_server:node_id(?DHT),
    Provider = #{node_id => Id, endpoint => Endpoint, metadata => #{}},
    Reply = macula_service_registry:publish_to_dht(?DHT, Service, Provider, Ttl, ?K),
    Served = macula_service_registry:advertise_local(Registry, Service, handler(Service), #{}),
    {reply, Reply, Served};
handle_call({remove, Service}, _From, Registry) ->
    Id = macula_routing_server:node_id(?DHT),
    Reply = macula_service_registry:remove_from_dht(?DHT, Service, Id),
    {reply, Reply, macula_service_registry:unadvertise_local(Registry, Service)};
handle_call({handler, Service}, _From, Registry) ->
    {reply, macula_service_registry:get_local_handler(Registry, Service), Registry}.

-spec handle_cast(term(), registry()) -> {noreply, registry()}.
handle_cast(_Ignored, Registry) ->
    {noreply, Registry}.
